//! What the crate's unit tests share.

use std::path::Path;
use std::sync::Arc;

use crate::config::Settings;
use crate::AccessPoint;

/// An access point over the repository's PModes and test keys, on a throw-away store in
/// `dir`, with the settings it was opened with.
pub(crate) fn access_point(dir: &Path) -> (Arc<AccessPoint>, Settings) {
    let (ap, s) = open_access_point(dir, |_| {}).unwrap();
    (Arc::new(ap), s)
}

/// Like [`access_point`], with the settings edited by `edit` first and the access point
/// not yet shared (to give it a clock), or the start-up error.
pub(crate) fn open_access_point(
    dir: &Path,
    edit: impl FnOnce(&mut Settings),
) -> Result<(AccessPoint, Settings), crate::access_point::StartError> {
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
    edit(&mut s);
    let store = varti_store::SledStore::open(dir.join("store")).unwrap();
    let metrics = Arc::new(crate::ops::Metrics::new());
    let ap = AccessPoint::open(s.clone(), Arc::new(store), metrics, false)?;
    Ok((ap, s))
}
