//! Scenario 17 (TLS with rustls, feature `tls`) and the TLS part of scenario 15 (secrets), each
//! against its own `redis-server` with a TLS port and certificates generated at test time
//! (`rcgen`: a CA, a server certificate for `localhost`, a client certificate; another CA that
//! signed nothing the server uses). No key is checked in.

#[path = "../../support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use support::logs::Logs;
use support::{RedisServer, bounded, wait_until};
use tiered::{Error, Plain, Runtime, Site, SiteOptions, memoize};

static ITEM: Site = Site::new("tls::item", "item:<id>", SiteOptions::DEFAULT);

/// A CA, and PEMs it signed, written to a directory of their own.
struct Pki {
    dir: PathBuf,
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    /// A CA; a server certificate for the name `localhost` only (so `127.0.0.1` is another
    /// name); a client certificate.
    fn generate() -> Pki {
        static N: AtomicU64 = AtomicU64::new(0);
        let ca_key = KeyPair::generate().expect("CA key");
        // Distinct subject names: OpenSSL (the server's side) takes a certificate whose
        // subject equals its issuer's for a self-signed one.
        let named = |sans: Vec<String>, cn: &str| {
            let mut p = CertificateParams::new(sans).expect("certificate params");
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, cn);
            p
        };
        let mut ca_params = named(Vec::new(), "tiered test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
        let server_key = KeyPair::generate().expect("server key");
        let server_cert = named(vec!["localhost".to_owned()], "localhost")
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let client_key = KeyPair::generate().expect("client key");
        let client_cert = named(vec!["tiered-client".to_owned()], "tiered-client")
            .signed_by(&client_key, &ca)
            .expect("client certificate");
        let dir = std::env::temp_dir().join(format!(
            "tiered-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let pki = Pki {
            dir,
            ca: ca.pem(),
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
            client_cert: client_cert.pem(),
            client_key: client_key.serialize_pem(),
        };
        for (name, pem) in [
            ("ca.pem", &pki.ca),
            ("server.pem", &pki.server_cert),
            ("server.key", &pki.server_key),
        ] {
            std::fs::write(pki.dir.join(name), pem).expect("write a PEM");
        }
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// A `redis-server` whose TLS port uses this PKI (`auth_clients`: `no`, or `yes` for
    /// mutual TLS); its plaintext port stays for the test's own commands. Returns the server
    /// and its TLS port.
    fn server(&self, auth_clients: &str) -> (RedisServer, u16) {
        let tls_port = RedisServer::reserve_port();
        let redis = RedisServer::start_with(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &self.path("server.pem"),
            "--tls-key-file",
            &self.path("server.key"),
            "--tls-ca-cert-file",
            &self.path("ca.pem"),
            "--tls-auth-clients",
            auth_clients,
        ]);
        (redis, tls_port)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn item(rt: &Runtime, id: u64) -> u64 {
    rt.scope(
        async move { memoize::<Plain<u64>, _, _>(&ITEM, &[&id], || async move { id * 7 }).await },
    )
    .await
}

async fn build(b: tiered::Builder) -> Result<Runtime, Error> {
    bounded("build", b.build()).await
}

/// Scenario 17: `rediss://localhost` with the generated CA (`tls_ca_pem`): two instances share
/// a value through L2 and an invalidation reaches the other over the TLS subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_17_tls_with_a_generated_ca_works() {
    let pki = Pki::generate();
    let (redis, port) = pki.server("no");
    let url = format!("rediss://localhost:{port}/");
    let builder = || {
        Runtime::builder()
            .namespace("tls")
            .redis_url(url.as_str())
            .tls_ca_pem(pki.ca.as_bytes())
    };
    let a = build(builder()).await.expect("TLS with the CA");
    let b = build(builder()).await.expect("TLS with the CA");
    assert!(a.stats().l2_connected && a.stats().subscribed);
    assert_eq!(item(&a, 1).await, 7);
    assert_eq!(item(&b, 1).await, 7);
    assert_eq!(b.stats().total.l2_hits, 1, "B read A's value over TLS");
    let received = b.stats().total.invalidations_received;
    a.invalidate(&ITEM, &[&1u64]).await.expect("invalidate");
    wait_until("B to hear it over TLS", || {
        b.stats().total.invalidations_received > received
    })
    .await;
    // The server saw TLS clients only on its TLS port (the test's own commands are plain).
    let clients: String = redis.cmd(&[b"CLIENT", b"LIST"]);
    println!(
        "scenario 17 (CA): 2 instances over TLS, L2 hit and invalidation received; {} client connections",
        clients.lines().count()
    );
}

/// Scenario 17, mutual TLS: a server that verifies clients (`tls-auth-clients yes`) accepts a
/// runtime with the client certificate (`tls_client_cert_pem`), and refuses one without it:
/// that is a `build()` error, not a silent L1-only start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_17_mutual_tls() {
    let pki = Pki::generate();
    let (redis, port) = pki.server("yes");
    let url = format!("rediss://localhost:{port}/");
    let with_cert = build(
        Runtime::builder()
            .namespace("mtls")
            .redis_url(url.as_str())
            .tls_ca_pem(pki.ca.as_bytes())
            .tls_client_cert_pem(pki.client_cert.as_bytes(), pki.client_key.as_bytes()),
    )
    .await
    .expect("mutual TLS with the client certificate");
    assert!(with_cert.stats().l2_connected && with_cert.stats().subscribed);
    assert_eq!(item(&with_cert, 2).await, 14);
    // Client tracking's connection of its own uses the same TLS settings (CA, certificate).
    let tracked = build(
        Runtime::builder()
            .namespace("mtls")
            .redis_url(url.as_str())
            .tls_ca_pem(pki.ca.as_bytes())
            .tls_client_cert_pem(pki.client_cert.as_bytes(), pki.client_key.as_bytes())
            .client_tracking(true),
    )
    .await
    .expect("client tracking over mutual TLS");
    assert!(tracked.stats().tracking);
    let key = tracked.key(&ITEM, &[&2u64]).expect("key");
    let evictions = tracked.stats().total.tracking_evictions;
    redis.cmd::<()>(&[b"DEL", key.as_str().as_bytes()]);
    wait_until("the DEL reported over TLS", || {
        tracked.stats().total.tracking_evictions > evictions
    })
    .await;
    let t = Instant::now();
    let without = build(
        Runtime::builder()
            .namespace("mtls")
            .redis_url(url.as_str())
            .tls_ca_pem(pki.ca.as_bytes()),
    )
    .await;
    println!(
        "scenario 17 (mTLS): with the client certificate: connected; without: {without:?} after {:?}",
        t.elapsed()
    );
    assert!(
        matches!(without, Err(Error::Tls { .. })),
        "no client certificate: {without:?}"
    );
}

/// Scenario 17, refusals, and scenario 15's TLS case: a CA that did not sign the server's
/// certificate, and a host name the certificate is not for (`127.0.0.1`), are `Error::Tls` from
/// `build()`, naming `host:port` and the cause, never the password (a canary, also absent from
/// every log line); `#insecure` is a configuration error; a plaintext client on the TLS port
/// fails fast (within the 1 s ceiling).
#[test]
fn scenario_17_a_wrong_ca_or_host_name_is_a_build_error() {
    let logs = Logs::new();
    logs.block_on(2, async {
        let pki = Pki::generate();
        let other = Pki::generate();
        let (_redis, port) = pki.server("no");
        let canary = "S3cr3t-canary-tls";
        for (case, url, ca) in [
            (
                "wrong CA",
                format!("rediss://:{canary}@localhost:{port}/"),
                &other.ca,
            ),
            (
                "wrong host name",
                format!("rediss://:{canary}@127.0.0.1:{port}/"),
                &pki.ca,
            ),
        ] {
            let t = Instant::now();
            let r = build(
                Runtime::builder()
                    .namespace("bad")
                    .redis_url(url.as_str())
                    .tls_ca_pem(ca.as_bytes()),
            )
            .await;
            let elapsed = t.elapsed();
            println!("scenario 17 ({case}): {r:?} after {elapsed:?}");
            match r {
                Err(e @ Error::Tls { .. }) => {
                    let (display, debug) = (e.to_string(), format!("{e:?}"));
                    assert!(display.contains(&port.to_string()), "{display}");
                    assert!(!display.contains(canary) && !debug.contains(canary));
                }
                other => panic!("{case}: expected Error::Tls, got {other:?}"),
            }
        }
        let insecure = build(
            Runtime::builder()
                .namespace("bad")
                .redis_url(format!("rediss://:{canary}@localhost:{port}/#insecure")),
        )
        .await;
        match insecure {
            Err(
                e @ Error::Config {
                    field: "redis_url", ..
                },
            ) => {
                assert!(!format!("{e} {e:?}").contains(canary));
            }
            other => panic!("#insecure: expected a configuration error, got {other:?}"),
        }
        // TLS settings for a plaintext URL.
        match build(
            Runtime::builder()
                .redis_url(format!("redis://:{canary}@localhost:{port}/"))
                .tls_ca_pem(pki.ca.as_bytes()),
        )
        .await
        {
            Err(
                e @ Error::Config {
                    field: "tls_ca", ..
                },
            ) => {
                assert!(!format!("{e} {e:?}").contains(canary));
            }
            other => {
                panic!("TLS settings on redis://: expected a configuration error, got {other:?}")
            }
        }
        // A plaintext client on the TLS port.
        let t = Instant::now();
        let plain = build(
            Runtime::builder()
                .namespace("bad")
                .redis_url(format!("redis://localhost:{port}/"))
                .connect_timeout(Duration::from_millis(500)),
        )
        .await;
        let elapsed = t.elapsed();
        println!(
            "scenario 17 (plaintext client on the TLS port): {} after {elapsed:?}",
            match &plain {
                Ok(rt) => format!(
                    "a degraded start (L2 connected: {})",
                    rt.stats().l2_connected
                ),
                Err(e) => format!("{e}"),
            }
        );
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
        if let Ok(rt) = &plain {
            assert!(!rt.stats().l2_connected);
        }
        logs.assert_absent(canary);
    });
}
