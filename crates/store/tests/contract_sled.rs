//! The store contract suite against the embedded sled store.

varti_store::store_contract_tests!(|| {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = varti_store::SledStore::open(dir.path()).expect("sled store opens");
    (store, dir)
});

/// A search reads only the records its index names: over 6,000 messages, a page of 10 by
/// partner, conversation, service, action or property reads 10 records (each a match),
/// never the store; an id prefix reads the messages it matches (bounded), no others.
#[test]
fn sled_searches_read_only_their_index_range() {
    use varti_store::{ListFilter, MessageProperty, NewInbound, SledStore, Store};
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SledStore::open(dir.path()).expect("sled store opens");
    let t0 = varti_store::contract::t0();
    for batch in 0..6 {
        let messages = (0..1000)
            .map(|j| {
                let i = batch * 1000 + j;
                let mut meta = varti_store::contract::meta(&format!("m{i:05}@x"), "alpha");
                meta.from_party = format!("p{}", i % 60);
                meta.conversation_id = format!("c{}", i % 300);
                meta.service = format!("svc{}", i % 50);
                meta.action = format!("act{}", i % 40);
                meta.properties = vec![MessageProperty {
                    name: "originalSender".into(),
                    value: format!("urn:s{}", i % 100),
                    type_: None,
                }];
                NewInbound {
                    meta,
                    receipt: b"r".to_vec(),
                    peer: None,
                }
            })
            .collect();
        let at = t0 + time::Duration::seconds(batch);
        assert_eq!(store.insert_inbound_batch(messages, at).unwrap(), 1000);
    }
    let page = |filter: ListFilter| {
        let before = store.records_read_by_list();
        let page = store
            .list(&ListFilter {
                limit: 10,
                ..filter
            })
            .unwrap();
        (page.records.len(), store.records_read_by_list() - before)
    };
    let cases = [
        ListFilter {
            partner: Some("p7".into()),
            ..ListFilter::default()
        },
        ListFilter {
            conversation_id: Some("c17".into()),
            ..ListFilter::default()
        },
        ListFilter {
            service: Some("svc3".into()),
            exclude_test: true,
            ..ListFilter::default()
        },
        ListFilter {
            action: Some("act3".into()),
            ..ListFilter::default()
        },
        ListFilter {
            properties: vec![("originalSender".into(), "urn:s42".into())],
            ..ListFilter::default()
        },
        ListFilter {
            owner: Some("alpha".into()),
            partner: Some("p7".into()),
            created_from: Some(t0 + time::Duration::seconds(2)),
            ..ListFilter::default()
        },
    ];
    for filter in cases {
        let (returned, read) = page(filter.clone());
        assert_eq!(returned, 10, "{filter:?}");
        assert_eq!(read, 10, "{filter:?}: read {read} records for a page of 10");
    }
    // `m012` is the prefix of m01200@x … m01299@x: those 100 are read and ordered.
    let (returned, read) = page(ListFilter {
        id_prefix: Some("m012".into()),
        ..ListFilter::default()
    });
    assert_eq!((returned, read), (10, 100));
}
