//! Golden table for sticky-hash: fixed keys, fixed server lists, the backend each key maps to.
//!
//! IF THIS FAILS, THE MAPPING CHANGED. Replicas of switchboard agree on a key's backend only
//! because they compute the same function; during a rolling upgrade old and new replicas run
//! side by side, so a changed hash, seed, key extraction or scoring sends the same session to
//! different backends depending on which replica a connection lands on: stickiness breaks for
//! every deployment at once. Do not regenerate this table to make the test pass. Change it only
//! when the change of mapping is deliberate and announced (release notes: "sticky-hash
//! assignments change; upgrade all replicas at once or expect sessions to move").
//!
//! Keys go through the same public path as a request's (`hash_key = "query:room"`,
//! [`key_hash`] on the request's parts, so percent-decoding is pinned too) into a balancer
//! built from config text, as switchboard builds it.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use switchboard::balancer::key::key_hash;
use switchboard::balancer::{Balancer, Tried};
use switchboard::config;
use switchboard::metrics::Metrics;

/// Server `n` of the tables is `10.0.0.n:9000`.
fn addr(n: u8) -> String {
    format!("10.0.0.{n}:9000")
}

/// Five servers, equal weights.
const FIVE_EQUAL: &str = concat!(
    r#""10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000", "#,
    r#""10.0.0.4:9000", "10.0.0.5:9000""#,
);
/// Four servers with weights 1, 2, 3 and 4.
const WEIGHTED: &str = concat!(
    r#"{ addr = "10.0.0.1:9000", weight = 1 }, { addr = "10.0.0.2:9000", weight = 2 }, "#,
    r#"{ addr = "10.0.0.3:9000", weight = 3 }, { addr = "10.0.0.4:9000", weight = 4 }"#,
);
/// Three servers, equal weights (the first three of [`FIVE_EQUAL`]).
const THREE: &str = r#""10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000""#;
/// [`THREE`] with server 2 removed.
const THREE_WITHOUT_2: &str = r#""10.0.0.1:9000", "10.0.0.3:9000""#;

/// `(room, FIVE_EQUAL, WEIGHTED, THREE, THREE_WITHOUT_2)`: the server number each key maps to.
type Row = (&'static str, u8, u8, u8, u8);

/// The golden table, one [`Row`] per key.
/// Generated once from the implementation when this file was written, then pasted in as
/// literals; read the top of the file before touching it.
#[rustfmt::skip]
const GOLDEN: [Row; 64] = [
    ("room-0", 2, 4, 2, 3),
    ("room-1", 3, 3, 3, 3),
    ("room-2", 5, 4, 2, 3),
    ("room-3", 4, 4, 2, 1),
    ("room-4", 1, 4, 1, 1),
    ("room-5", 5, 3, 3, 3),
    ("room-6", 2, 2, 2, 1),
    ("room-7", 5, 3, 3, 3),
    ("room-8", 2, 2, 2, 3),
    ("room-9", 1, 3, 1, 1),
    ("room-10", 5, 4, 2, 1),
    ("room-11", 5, 4, 2, 1),
    ("room-12", 1, 3, 1, 1),
    ("room-13", 3, 3, 3, 3),
    ("room-14", 3, 3, 3, 3),
    ("room-15", 4, 4, 1, 1),
    ("room-16", 4, 4, 3, 3),
    ("room-17", 5, 2, 2, 1),
    ("room-18", 5, 4, 1, 1),
    ("room-19", 3, 3, 3, 3),
    ("room-20", 2, 2, 2, 1),
    ("room-21", 2, 2, 2, 3),
    ("room-22", 3, 3, 3, 3),
    ("room-23", 1, 3, 1, 1),
    ("room-24", 2, 2, 2, 1),
    ("room-25", 1, 1, 1, 1),
    ("room-26", 1, 3, 1, 1),
    ("room-27", 1, 1, 1, 1),
    ("room-28", 4, 4, 3, 3),
    ("room-29", 4, 4, 2, 3),
    ("room-30", 5, 4, 1, 1),
    ("room-31", 3, 3, 3, 3),
    ("room-32", 3, 3, 3, 3),
    ("room-33", 1, 4, 1, 1),
    ("room-34", 4, 4, 1, 1),
    ("room-35", 2, 3, 2, 3),
    ("room-36", 2, 2, 2, 3),
    ("room-37", 1, 3, 1, 1),
    ("room-38", 3, 3, 3, 3),
    ("room-39", 4, 4, 1, 1),
    ("room-40", 2, 2, 2, 3),
    ("room-41", 2, 2, 2, 3),
    ("room-42", 1, 4, 1, 1),
    ("room-43", 3, 3, 3, 3),
    ("room-44", 1, 1, 1, 1),
    ("room-45", 2, 2, 2, 3),
    ("room-46", 4, 4, 2, 3),
    ("room-47", 2, 2, 2, 1),
    ("room-48", 1, 1, 1, 1),
    ("room-49", 1, 3, 1, 1),
    ("room-50", 2, 2, 2, 1),
    ("room-51", 5, 4, 1, 1),
    ("room-52", 1, 2, 1, 1),
    ("room-53", 4, 4, 1, 1),
    ("room-54", 3, 3, 3, 3),
    ("room-55", 3, 3, 3, 3),
    ("", 4, 4, 3, 3),
    ("x", 3, 3, 3, 3),
    ("12345678", 4, 4, 3, 3),
    ("123456789", 3, 3, 3, 3),
    ("user:42", 5, 4, 1, 1),
    ("a%20b", 2, 4, 2, 3),
    ("Lobby", 4, 4, 1, 1),
    ("a-long-room-name-of-more-than-thirty-two-bytes", 4, 4, 1, 1),
];

/// `key_hash` of a few rooms: when the table fails, these say whether the key hash changed
/// (hash function, seed, key extraction) or the choice among backends did.
const GOLDEN_HASHES: [(&str, u64); 4] = [
    ("room-0", 0xE3E1_E225_9BD8_FD39),
    ("", 0x969C_56EF_D660_4CA3),
    ("a%20b", 0x72E1_2AA2_F689_7AD6),
    (
        "a-long-room-name-of-more-than-thirty-two-bytes",
        0x6CA3_C55C_5A37_826E,
    ),
];

/// A sticky-hash balancer over `servers` (the inside of a TOML list), built from config text.
fn balancer(servers: &str) -> Balancer {
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[upstream.u]\n\
         balance = \"sticky-hash\"\nhash_key = \"query:room\"\nservers = [{servers}]\n"
    );
    let config = config::from_toml_str(&text, "sticky_golden.toml").unwrap();
    Balancer::new(
        &config.upstreams[0],
        Duration::from_secs(10),
        &Metrics::new(),
    )
}

/// The hash a request for `/ws?room={room}` gets, by the function requests use.
fn room_hash(b: &Balancer, room: &str) -> u64 {
    let parts = http::Request::get(format!("/ws?room={room}"))
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let spec = b.key_spec().expect("sticky-hash has a key");
    key_hash(spec, &parts, IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("the room is in the query")
}

/// The backend `room` is sent to (the lease is dropped at once: no load effects).
fn backend_for(b: &Balancer, room: &str) -> String {
    let pick = b
        .pick(Some(room_hash(b, room)), &mut Tried::default())
        .expect("all backends are up");
    pick.lease.backend().name.clone()
}

/// Compares every row of one column with what the balancer does now; lists all differences.
fn check_column(servers: &str, column: fn(&Row) -> u8, what: &str) {
    let b = balancer(servers);
    let moved: Vec<String> = GOLDEN
        .iter()
        .filter_map(|row| {
            let (want, got) = (addr(column(row)), backend_for(&b, row.0));
            (want != got).then(|| format!("  room {:?}: golden {want}, now {got}", row.0))
        })
        .collect();
    assert!(
        moved.is_empty(),
        "sticky-hash mapping for {what} changed for {} of {} keys; this breaks stickiness \
         across a rolling upgrade (see the top of tests/sticky_golden.rs):\n{}",
        moved.len(),
        GOLDEN.len(),
        moved.join("\n")
    );
}

#[test]
fn key_hashes_are_pinned() {
    let b = balancer(THREE);
    for (room, want) in GOLDEN_HASHES {
        assert_eq!(
            room_hash(&b, room),
            want,
            "key_hash of room {room:?} changed: every sticky session would move on upgrade"
        );
    }
}

#[test]
fn five_equal_servers() {
    check_column(FIVE_EQUAL, |r| r.1, "five equal servers");
}

#[test]
fn four_servers_weighted_1_2_3_4() {
    check_column(WEIGHTED, |r| r.2, "four servers weighted 1, 2, 3, 4");
}

#[test]
fn three_equal_servers() {
    check_column(THREE, |r| r.3, "three equal servers");
}

#[test]
fn three_servers_after_removing_one() {
    check_column(THREE_WITHOUT_2, |r| r.4, "three servers minus server 2");
}

/// The table itself must show rendezvous hashing's guarantee: removing servers moves only the
/// keys that were on them.
#[test]
fn the_table_moves_only_the_keys_of_removed_servers() {
    for &(room, five, _, three, two) in &GOLDEN {
        // THREE is FIVE_EQUAL without servers 4 and 5.
        if five <= 3 {
            assert_eq!(three, five, "room {room:?} moved though its server stayed");
        }
        // THREE_WITHOUT_2 is THREE without server 2.
        if three == 2 {
            assert_ne!(two, 2, "room {room:?} still on the removed server");
        } else {
            assert_eq!(two, three, "room {room:?} moved though its server stayed");
        }
    }
    // Every server of every list gets some of the 64 keys.
    for (column, servers) in [(1, 1..=5), (2, 1..=4), (3, 1..=3)] {
        for n in servers {
            let count = GOLDEN
                .iter()
                .filter(|r| [r.1, r.2, r.3][column - 1] == n)
                .count();
            assert!(count > 0, "column {column}: server {n} has no key");
        }
    }
}
