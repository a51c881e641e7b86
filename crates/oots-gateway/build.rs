//! Builds the XSLT sandbox (`csrc/xslt_sandbox.c`) against the system's libxslt and libxml2,
//! found with pkg-config (Debian: libxslt1-dev).

fn main() {
    println!("cargo:rerun-if-changed=csrc/xslt_sandbox.c");
    let xslt = pkg_config::Config::new()
        .probe("libxslt")
        .expect("libxslt not found by pkg-config: install libxslt1-dev (Debian) or libxslt-devel");
    let mut build = cc::Build::new();
    build.file("csrc/xslt_sandbox.c").warnings(true);
    for path in &xslt.include_paths {
        build.include(path);
    }
    build.compile("varti_xslt_sandbox");
}
