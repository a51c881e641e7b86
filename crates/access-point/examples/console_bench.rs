//! Console benchmark: how long the console takes to render a page of 50 messages (the
//! search in the store and the HTML) with N messages (default 1,000,000) in each store,
//! the embedded sled store and PostgreSQL, on the data set of `varti-store`'s
//! `search_bench` (loaded the same way).
//!
//! ```sh
//! cargo run --release -p varti-access-point --example console_bench -- [--messages 1000000]
//!     [--dir DIR] [--runs 20]
//! ```
//!
//! The access point is opened over each store with the repository's PModes and test keys.
//! Each page runs `--runs` times; the median and the worst are printed as the rows of
//! docs/benchmarks.md. Not part of the test suite (loading takes minutes).

#[allow(dead_code, unreachable_pub)]
#[path = "../../store/examples/search_bench.rs"]
mod data;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use varti_access_point::config::Settings;
use varti_access_point::console::render_message_page;
use varti_access_point::AccessPoint;
use varti_store::Store;

fn usage() -> ! {
    eprintln!("usage: console_bench [--messages 1000000] [--dir DIR] [--runs 20]");
    std::process::exit(2);
}

fn access_point(store: Arc<dyn Store>, dir: &Path) -> AccessPoint {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut s = Settings {
        data_dir: dir.to_owned(),
        pmodes_dir: repo.join("pmodes"),
        ..Default::default()
    };
    for p in [
        &mut s.identity.signing_key,
        &mut s.identity.signing_cert,
        &mut s.identity.encryption_key,
        &mut s.identity.encryption_cert,
        &mut s.tls.cert,
        &mut s.tls.key,
        &mut s.tls.client_ca,
    ] {
        *p = repo.join(&*p);
    }
    s.identity.trust_anchors = vec![repo.join("certs/ca.cert.pem")];
    let metrics = Arc::new(varti_access_point::ops::Metrics::new());
    AccessPoint::open(s, store, metrics, false).expect("the access point opens")
}

/// Median and worst of `runs` renders, and the rows of the last page.
fn time_page(ap: &AccessPoint, query: &str, runs: usize) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut rows = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let html = render_message_page(ap, query).expect("the page renders");
        times.push(started.elapsed());
        rows = html.matches("<tr><td><a href=\"/console/messages/").count();
    }
    times.sort();
    (times[times.len() / 2], times[times.len() - 1], rows)
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let (mut n, mut dir, mut runs) = (1_000_000usize, PathBuf::from("target"), 20usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--messages" => n = value.parse().unwrap_or_else(|_| usage()),
            "--dir" => dir = PathBuf::from(value),
            "--runs" => runs = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let tmp = tempfile::tempdir_in(&dir).expect("temporary directory");
    let (sled, schema) = data::load(&tmp.path().join("store"), n);
    let sled_ap = access_point(Arc::new(sled), &tmp.path().join("sled-ap"));
    let pg_ap = access_point(Arc::new(schema.store()), &tmp.path().join("pg-ap"));
    let middle = data::created(n / 2);
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .expect("formats")
            .replace(':', "%3A")
            .replace('+', "%2B")
    };
    let pages = [
        ("no filter", String::new()),
        ("partner", "partner=urn%3Abench%3Aparty%3A17".to_owned()),
        (
            "partner + since/until (one hour)",
            format!(
                "partner=urn%3Abench%3Aparty%3A17&since={}&until={}",
                rfc(middle),
                rfc(middle + time::Duration::hours(1))
            ),
        ),
        (
            "state + direction",
            "state=received&direction=inbound".to_owned(),
        ),
    ];
    println!("| Console page of 50 ({n} messages) | sled median / worst ms | PostgreSQL median / worst ms | rows |");
    println!("|---|---|---|---|");
    for (name, query) in pages {
        let (s_med, s_max, s_rows) = time_page(&sled_ap, &query, runs);
        let (p_med, p_max, p_rows) = time_page(&pg_ap, &query, runs);
        assert_eq!(s_rows, p_rows, "{name}: the stores disagree");
        println!(
            "| {name} | {} / {} | {} / {} | {s_rows} |",
            ms(s_med),
            ms(s_max),
            ms(p_med),
            ms(p_max)
        );
    }
    drop(schema);
}
