//! The store contract suite against the embedded sled store.

varti_store::store_contract_tests!(|| {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = varti_store::SledStore::open(dir.path()).expect("sled store opens");
    (store, dir)
});
