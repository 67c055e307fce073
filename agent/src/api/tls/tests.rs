//! Loading the TLS files: what is accepted, and that each refusal names the file at fault.
use std::path::Path;

use super::test_certs as certs;
use super::*;

fn tls(files: &certs::PkiFiles, with_ca: bool) -> TlsConfig {
    TlsConfig {
        cert_file: files.server_cert.clone(),
        key_file: files.server_key.clone(),
        client_ca_file: with_ca.then(|| files.ca.clone()),
    }
}

fn error(config: &TlsConfig) -> String {
    let error = ServerTls::load(config).expect_err("must be refused");
    // The whole chain, as the agent prints it (`{:#}` of anyhow).
    format!("{:#}", anyhow::Error::from(error))
}

fn assert_names(message: &str, path: &Path) {
    assert!(
        message.contains(&path.display().to_string()),
        "the message should name {}: {message}",
        path.display()
    );
}

#[test]
fn valid_files_load_with_and_without_a_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let files = certs::PkiFiles::write(dir.path());
    let mutual = ServerTls::load(&tls(&files, true)).unwrap();
    assert_eq!(mutual.client_ca_file(), Some(files.ca.as_path()));
    let server_only = ServerTls::load(&tls(&files, false)).unwrap();
    assert_eq!(server_only.client_ca_file(), None);
}

#[test]
fn a_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let files = certs::PkiFiles::write(dir.path());
    for missing in ["cert", "key", "ca"] {
        let mut config = tls(&files, true);
        let path = dir.path().join(format!("missing-{missing}.pem"));
        match missing {
            "cert" => config.cert_file = path.clone(),
            "key" => config.key_file = path.clone(),
            _ => config.client_ca_file = Some(path.clone()),
        }
        let message = error(&config);
        assert_names(&message, &path);
        assert!(message.contains("No such file"), "{message}");
    }
}

#[test]
fn files_without_what_they_should_hold_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let files = certs::PkiFiles::write(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n").unwrap();

    // A key where the certificate should be, and a certificate where the key should be.
    let mut swapped = tls(&files, false);
    swapped.cert_file = files.server_key.clone();
    let message = error(&swapped);
    assert_names(&message, &files.server_key);
    assert!(message.contains("no PEM certificate"), "{message}");

    let mut swapped = tls(&files, false);
    swapped.key_file = files.server_cert.clone();
    let message = error(&swapped);
    assert_names(&message, &files.server_cert);
    assert!(message.contains("no usable PEM private key"), "{message}");

    let mut bad_ca = tls(&files, true);
    bad_ca.client_ca_file = Some(garbage.clone());
    let message = error(&bad_ca);
    assert_names(&message, &garbage);
    assert!(message.contains("no PEM certificate"), "{message}");
}

#[test]
fn a_key_of_another_certificate_is_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = certs::PkiFiles::write(dir.path());
    let mut config = tls(&files, false);
    config.key_file = files.client_key.clone();
    let message = error(&config);
    assert_names(&message, &files.server_cert);
    assert_names(&message, &files.client_key);
    assert!(message.contains("cannot be used"), "{message}");
}

#[test]
fn a_tcp_listener_without_tls_is_refused() {
    let api = ApiConfig {
        unix_socket: "/tmp/x.sock".into(),
        tcp: Some("127.0.0.1:7447".parse().unwrap()),
        tls: None,
    };
    let error = tcp_endpoint(&api).unwrap_err().to_string();
    assert!(
        error.contains("127.0.0.1:7447") && error.contains("only TLS"),
        "{error}"
    );
    let no_tcp = ApiConfig { tcp: None, ..api };
    assert!(tcp_endpoint(&no_tcp).unwrap().is_none());
}
