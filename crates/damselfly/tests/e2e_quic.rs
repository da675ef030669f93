//! End-to-end: two dfdaemons with `download.protocol: quic` move a file peer to peer over
//! Vortex QUIC (Dragonfly-compatible security), byte-identical and counted as peer traffic.

mod common;

use common::*;

#[test]
fn two_daemons_move_a_file_over_quic() {
    let origin = Origin::start();
    let file = origin.add_random("quic/24mib.bin", 24 * MIB);
    let size = file.len() as f64;

    let mut c = Cluster::new("quic");
    c.start_scheduler();
    let config = c.path("dfdaemon-quic.yaml");
    std::fs::write(&config, "download:\n  protocol: quic\n").unwrap();
    let opts = || DaemonOpts {
        extra: vec!["--config".into(), config.display().to_string()],
        // The piece servers say which transport carried each upload at debug level.
        log_level: "info,damselfly_transfer=debug".into(),
        ..Default::default()
    };
    let first = c.start_daemon(opts());
    let second = c.start_daemon(opts());

    let first_out = c.path("first.bin");
    let result = c.dfget(&first.socket, &file.url, &first_out, &[]);
    assert_download_ok(&result, &first_out, &file);
    let second_out = c.path("second.bin");
    let result = c.dfget(&second.socket, &file.url, &second_out, &[]);
    assert_download_ok(&result, &second_out, &file);

    let traffic = second.traffic();
    eprintln!("second: {traffic:?}");
    assert!(
        traffic.remote_normal >= size,
        "the second daemon took {} bytes from its peer for a {size}-byte file: {traffic:?}",
        traffic.remote_normal
    );
    assert_eq!(traffic.back_to_source, 0.0, "{traffic:?}");
    let served = origin.served() as f64;
    assert!(served <= 1.05 * size, "origin served {served} bytes");
    let uploads = first.log_text().matches("piece uploaded over quic").count();
    assert!(
        uploads > 0,
        "the first daemon's log shows no piece uploaded over QUIC"
    );
    c.assert_no_panics();
}
