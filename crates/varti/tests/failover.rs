//! Database failover under load: a PostgreSQL primary and a synchronous streaming standby,
//! started by the test from the installed binaries (as the `postgres` user), carry a
//! sending pair (two varti-a) and a receiving pair (two varti-b) whose `store.url` lists
//! both servers with `target_session_attrs=read-write`. While messages flow, the primary is
//! stopped hard (`pg_ctl stop -m immediate`) and the standby promoted: the pairs carry on,
//! nothing acknowledged before the failover is lost, and every message is acknowledged and
//! taken by the receiving backend exactly once.
//!
//! The PostgreSQL binaries come from `VARTI_PG_BIN` (default `/usr/lib/postgresql/15/bin`);
//! the test fails, it never skips, when they or the `postgres` user are missing.

mod chaos_support;
mod pair_support;
mod pg_cluster_support;
mod serve_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaos_support::*;
use pg_cluster_support::Cluster;

#[test]
fn pairs_carry_on_when_the_primary_is_lost_and_the_standby_promoted() {
    let n = message_count("VARTI_FAILOVER_N", 600);
    let mut cluster = Cluster::start();
    cluster.migrated_schema("varti_a");
    cluster.migrated_schema("varti_b");
    let url = cluster.failover_url();

    let run = format!("f{}", std::process::id());
    let balancer = Arc::new(Balancer::bind(2));
    let pair = chaos_pair(balancer.port);
    let stores = ["varti_a", "varti_b"].map(|schema| postgres_store_config(&url, schema));
    let (senders, receivers) = start_pairs(&pair.layout, [&stores[0], &stores[1]]);
    balancer.set_targets(receivers.iter().map(Instance::msh).collect());
    let sending = Side::of(&senders.iter().collect::<Vec<_>>());

    // Once a third of the messages are acknowledged: note which, lose the primary, promote.
    let mut acknowledged_before: HashSet<String> = HashSet::new();
    let mut failover_at = None;
    let mut interlude = |_submitted: usize, acknowledged: usize| -> bool {
        if acknowledged < n / 3 {
            return false;
        }
        acknowledged_before = sending
            .all("outbound")
            .iter()
            .filter(|m| m["state"] == "acknowledged")
            .map(|m| m["message_id"].as_str().unwrap().to_owned())
            .collect();
        eprintln!(
            "failover: {} acknowledged; stopping the primary (immediate) and promoting the standby",
            acknowledged_before.len()
        );
        cluster.kill_primary();
        cluster.promote_standby();
        failover_at = Some(Instant::now());
        true
    };
    let outcome = Scenario {
        run: run.clone(),
        n,
        senders,
        receivers,
        kill_senders: false,
        kill_receivers: false,
        balancer,
        within: Duration::from_secs(300),
    }
    .run(&mut interlude);
    let failover_at = failover_at.expect("the failover happened during the run");
    assert!(
        !acknowledged_before.is_empty() && acknowledged_before.len() < n,
        "the failover must fall in the middle of the flow ({} of {n} acknowledged before it)",
        acknowledged_before.len()
    );
    eprintln!(
        "failover: the run settled {:.1}s after the failover",
        failover_at.elapsed().as_secs_f64()
    );

    // Nothing acknowledged before the failover was lost: each is still acknowledged (the
    // full check above also found every message acknowledged and taken exactly once).
    let after: HashSet<String> = sending
        .all("outbound")
        .iter()
        .filter(|m| m["state"] == "acknowledged")
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<_> = acknowledged_before.difference(&after).collect();
    assert!(
        lost.is_empty(),
        "acknowledged before the failover, gone after: {lost:?}"
    );

    // The old primary is gone: the stores now live on the promoted standby alone.
    let mut promoted = postgres::Client::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            cluster.standby_port
        ),
        postgres::NoTls,
    )
    .unwrap();
    let in_recovery: bool = promoted
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(!in_recovery, "the standby was promoted");
    let count: i64 = promoted
        .query_one("SELECT count(*) FROM varti_b.messages", &[])
        .unwrap()
        .get(0);
    assert_eq!(count as usize, n, "inbound messages on the promoted server");

    for mut instance in outcome.senders.into_iter().chain(outcome.receivers) {
        instance.terminate();
    }
    drop(cluster);
}
