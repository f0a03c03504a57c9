//! Prints what sched-trace reads from a Go executable: `cargo run -p sched-trace-binaries --example go-info -- BINARY`.
fn main() {
    for path in std::env::args().skip(1) {
        match sched_trace_binaries::go::GoBinary::open(std::path::Path::new(&path)) {
            Ok(Some(b)) => {
                println!(
                    "{path}: {} {} {:?} tls {} fns {} globals {:?}",
                    b.version.text,
                    b.main_path,
                    b.layout_source,
                    b.tls_g_offset,
                    b.functions.len(),
                    b.globals
                );
                let mut l = b.layout.clone();
                l.wait_reasons.retain(|k, _| *k < 4);
                println!("  {l:?}");
                println!("  sites {:?}\n  missing {:?}", b.probe_sites, b.missing_sites);
            }
            Ok(None) => println!("{path}: not a Go program"),
            Err(e) => println!("{path}: {e}"),
        }
    }
}
