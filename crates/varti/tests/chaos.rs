//! Chaos: messages flow from varti-a to varti-b through real `varti serve` processes over
//! TLS while instances are killed with SIGKILL and restarted, and at the end every message
//! is acknowledged, the receiving backend took each exactly once, and nothing is left
//! sending or waiting for a retry.
//!
//! * `active_active_pairs_on_postgresql_survive_kill_9`: a sending pair (two varti-a on one
//!   PostgreSQL schema) and a receiving pair (two varti-b on another) behind a TCP
//!   balancer; one instance of each pair is killed in turn (issue 6).
//! * `embedded_store_survives_kill_9_of_the_receiver`: one instance per side on the sled
//!   store, the receiver killed and restarted (the crash test of issue 4).
//!
//! `VARTI_CHAOS_N` sets the number of messages (default 2000), `VARTI_CHAOS_SEED` replays a
//! schedule of kills. PostgreSQL must be reachable (see `varti_store::postgres::testing`):
//! the test fails, it never skips, when it is not.

mod chaos_support;
mod pair_support;
mod serve_support;

use std::sync::Arc;
use std::time::Duration;

use chaos_support::*;
use varti_store::postgres::testing::TestSchema;

/// Which store the instances use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Two instances per side, one PostgreSQL schema per side.
    PostgresPairs,
    /// One instance per side, the embedded sled store.
    Sled,
}

/// Limit on one run's flow (submission to the last take); a run that needs it is a failure.
const WITHIN: Duration = Duration::from_secs(300);

/// The two runs take turns: each loads the machine on its own.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn chaos(kind: Kind) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let n = message_count("VARTI_CHAOS_N", 2000);
    let run = format!(
        "{}{}",
        if kind == Kind::Sled { "s" } else { "p" },
        std::process::id()
    );
    eprintln!("chaos: {kind:?}, {n} messages, run {run}");
    let balancer = Arc::new(Balancer::bind(2));
    let pair = chaos_pair(balancer.port);
    let layout = &pair.layout;

    // The schemas outlive the processes (declared first, dropped last).
    let mut schemas = Vec::new();
    let (senders, receivers) = match kind {
        Kind::PostgresPairs => {
            let (sa, sb) = (TestSchema::migrated(), TestSchema::migrated());
            let [store_a, store_b] = [&sa, &sb].map(|s| postgres_store_config(s.url(), s.name()));
            let started = start_pairs(layout, [&store_a, &store_b]);
            schemas.push(sa);
            schemas.push(sb);
            started
        }
        Kind::Sled => (
            vec![Instance::start(layout.a.clone())],
            vec![Instance::start(layout.b.clone())],
        ),
    };
    balancer.set_targets(receivers.iter().map(Instance::msh).collect());

    let outcome = Scenario {
        run,
        n,
        senders,
        receivers,
        kill_senders: kind == Kind::PostgresPairs,
        kill_receivers: true,
        balancer,
        within: WITHIN,
    }
    .run(&mut |_, _| true);
    assert!(
        outcome.kills >= 2,
        "the run ended before the faults began ({} kills): raise VARTI_CHAOS_N",
        outcome.kills
    );
    // Every instance still stops cleanly after all that.
    for mut instance in outcome.senders.into_iter().chain(outcome.receivers) {
        instance.terminate();
    }
    drop(schemas);
}

/// Issue 6: an active-active sending pair and receiving pair on PostgreSQL.
#[test]
fn active_active_pairs_on_postgresql_survive_kill_9() {
    chaos(Kind::PostgresPairs);
}

/// Issue 4: the embedded store, its receiving process killed -9 under load and restarted.
#[test]
fn embedded_store_survives_kill_9_of_the_receiver() {
    chaos(Kind::Sled);
}
