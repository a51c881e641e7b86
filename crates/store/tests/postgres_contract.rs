//! The store contract suite against PostgreSQL: each test gets its own freshly migrated
//! schema, dropped afterwards. Fails (never skips) when the database is unreachable; see
//! `varti_store::postgres::testing`.

varti_store::store_contract_tests!(|| {
    let schema = varti_store::postgres::testing::TestSchema::migrated();
    (schema.store(), schema)
});
