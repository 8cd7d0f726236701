//! The TLS run (not part of `cargo test`; it reconfigures the machine's Postgres): a throwaway CA
//! and a server certificate for `localhost` are installed with ALTER SYSTEM, then each sslmode
//! connects, or is refused, through the worker's own `store::connect` and `store::migrate_only`.
//! The server's TLS settings are put back at the end, also when a check fails.
//! Run: `cargo test --test tls -- --nocapture`.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _, chown},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use roadmap_worker::{
    config::{CaFile, DbSettings},
    store,
};
use tokio_postgres::NoTls;
use uuid::Uuid;

/// The run edits this server's files, so it is always the local cluster, whatever TEST_PG_URL says.
const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Trust auth ignores it; it is there to prove that no error shows it.
const PASSWORD: &str = "tls-run-s3cr3t";
const SETTINGS: [&str; 3] = ["ssl", "ssl_cert_file", "ssl_key_file"];
/// Temporary directories of this run start with it, so a run killed before it restored the
/// server is recognised (and not restored to) by the next one.
const DIR_PREFIX: &str = "rwtest-tls-";

async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(ADMIN_URL, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach Postgres at {ADMIN_URL} ({e}); start it with `pg_ctlcluster 15 main start`")
        });
    tokio::spawn(connection);
    client
}

/// Each statement alone: ALTER SYSTEM refuses to run inside the implicit transaction of a
/// multi-statement query.
async fn admin_run(statements: &[String]) -> Result<(), tokio_postgres::Error> {
    let client = admin().await;
    for sql in statements {
        client.batch_execute(sql).await?;
    }
    Ok(())
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The server's TLS settings as ALTER SYSTEM left them before this run, and the statements that
/// put them back.
struct Restore {
    statements: Vec<String>,
    dir: PathBuf,
    database: String,
}

impl Restore {
    async fn record(dir: PathBuf, database: String) -> Self {
        let rows = admin()
            .await
            .query(
                "SELECT name, setting FROM pg_file_settings
                 WHERE sourcefile LIKE '%postgresql.auto.conf' AND name = ANY($1)",
                &[&SETTINGS.as_slice()],
            )
            .await
            .unwrap();
        let mut statements: Vec<String> = SETTINGS
            .iter()
            .map(|name| {
                let earlier = rows.iter().rev().find(|r| r.get::<_, &str>(0) == *name);
                match earlier.map(|r| r.get::<_, String>(1)) {
                    Some(value) if !value.contains(DIR_PREFIX) => {
                        format!("ALTER SYSTEM SET {name} = {}", quote(&value))
                    }
                    _ => format!("ALTER SYSTEM RESET {name}"),
                }
            })
            .collect();
        statements.push("SELECT pg_reload_conf()".into());
        statements.push(format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"));
        Self {
            statements,
            dir,
            database,
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        // Drop can run while the test's runtime unwinds a panic: a thread with a runtime of its
        // own does the restoring.
        let statements = self.statements.clone();
        let restored = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(admin_run(&statements))
        })
        .join();
        match restored {
            Ok(Ok(())) => println!("restored the server's TLS settings; dropped {}", self.database),
            other => eprintln!(
                "RESTORING THE SERVER FAILED ({other:?}); run by hand: {}",
                self.statements.join("; ")
            ),
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A CA, a certificate for `localhost` (and no IP address) that it signed, and an unrelated CA.
struct Pki {
    ca: String,
    other_ca: String,
    server_cert: String,
    server_key: String,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

impl Pki {
    fn new() -> Self {
        let ca = new_ca("roadmap-worker TLS run CA");
        let other_ca = new_ca("some other CA");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().unwrap();
        let server = params.signed_by(&key, &ca).unwrap();
        Self {
            ca: ca.pem(),
            other_ca: other_ca.pem(),
            server_cert: server.pem(),
            server_key: key.serialize_pem(),
        }
    }
}

fn write(path: &Path, text: &str, mode: u32, owner: (u32, u32)) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    chown(path, Some(owner.0), Some(owner.1)).unwrap();
}

/// Waits until a new session sees `setting` at `value`: the postmaster has then reloaded.
async fn wait_for_setting(setting: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = admin()
            .await
            .query_one("SELECT current_setting($1)", &[&setting])
            .await
            .unwrap();
        if row.get::<_, String>(0) == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not reload {setting} = {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Run {
    database: String,
    ca: PathBuf,
    other_ca: PathBuf,
}

impl Run {
    fn settings(&self, url: String, ca_file: Option<&Path>) -> DbSettings {
        DbSettings {
            url: url.parse().unwrap(),
            pool_size: 2,
            ca_file: ca_file.map(|path| CaFile::load(path).unwrap()),
        }
    }

    fn url(&self, host: &str, mode: Option<&str>) -> String {
        let base = format!("postgres://postgres:{PASSWORD}@{host}:5432/{}", self.database);
        match mode {
            Some(mode) => format!("{base}?sslmode={mode}"),
            None => base,
        }
    }

    /// Connects through `store::connect` (database check, migrations, then a pooled session) and
    /// tells whether the pooled session is encrypted.
    async fn ssl_in_use(&self, settings: &DbSettings) -> anyhow::Result<bool> {
        let pool = store::connect(settings, "rwtest-tls").await?;
        let client = pool.get().await?;
        let row = client
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await?;
        Ok(row.get(0))
    }

    async fn connects(&self, what: &str, settings: DbSettings, encrypted: bool) {
        match self.ssl_in_use(&settings).await {
            Ok(ssl) => {
                assert_eq!(ssl, encrypted, "{what}: pg_stat_ssl.ssl");
                println!("ok: {what} connects (ssl = {ssl})");
            }
            Err(e) => panic!("{what} was refused: {e:#}"),
        }
    }

    async fn refused(&self, what: &str, settings: DbSettings, expected: &[&str]) {
        let err = match store::migrate_only(&settings).await {
            Ok(()) => panic!("{what} connected"),
            Err(e) => format!("{e:#}"),
        };
        for part in expected {
            assert!(err.contains(part), "{what}: the error lacks {part:?}: {err}");
        }
        assert!(
            !err.contains(PASSWORD),
            "{what}: the error shows the password: {err}"
        );
        println!("ok: {what} is refused: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_connects_or_is_refused_as_libpq_would() {
    let id = &Uuid::new_v4().simple().to_string()[..12];
    let database = format!("rwtest_tls_{id}");
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{id}"));

    let data_dir: String = admin()
        .await
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    let meta = fs::metadata(&data_dir)
        .unwrap_or_else(|e| panic!("the server's data directory {data_dir} is not on this machine ({e})"));
    let postgres = (meta.uid(), meta.gid());

    let restore = Restore::record(dir.clone(), database.clone()).await;
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let pki = Pki::new();
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    write(&cert, &pki.server_cert, 0o644, postgres);
    // Postgres refuses a key file that others can read.
    write(&key, &pki.server_key, 0o600, postgres);
    let run = Run {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other-ca.pem"),
        database,
    };
    fs::write(&run.ca, &pki.ca).unwrap();
    fs::write(&run.other_ca, &pki.other_ca).unwrap();

    let cert_path = cert.display().to_string();
    admin_run(&[
        format!("ALTER SYSTEM SET ssl_cert_file = {}", quote(&cert_path)),
        format!(
            "ALTER SYSTEM SET ssl_key_file = {}",
            quote(&key.display().to_string())
        ),
        "ALTER SYSTEM SET ssl = on".into(),
        "SELECT pg_reload_conf()".into(),
    ])
    .await
    .unwrap();
    wait_for_setting("ssl_cert_file", &cert_path).await;
    println!(
        "the server now presents a certificate for localhost from {}",
        dir.display()
    );

    let ca = Some(run.ca.as_path());
    let other_ca = Some(run.other_ca.as_path());
    run.connects(
        "sslmode=require",
        run.settings(run.url("127.0.0.1", Some("require")), None),
        true,
    )
    .await;
    run.connects(
        "sslmode=verify-full to localhost with the right CA",
        run.settings(run.url("localhost", Some("verify-full")), ca),
        true,
    )
    .await;
    run.refused(
        "sslmode=verify-full with another CA",
        run.settings(run.url("localhost", Some("verify-full")), other_ca),
        &["certificate was not trusted", "UnknownIssuer", "DATABASE_CA_FILE"],
    )
    .await;
    run.refused(
        "sslmode=verify-full to 127.0.0.1, a name the certificate lacks",
        run.settings(run.url("127.0.0.1", Some("verify-full")), ca),
        &["does not name the host", "127.0.0.1"],
    )
    .await;
    run.connects(
        "sslmode=verify-ca to 127.0.0.1 with the right CA",
        run.settings(run.url("127.0.0.1", Some("verify-ca")), ca),
        true,
    )
    .await;
    run.refused(
        "sslmode=verify-ca with another CA",
        run.settings(run.url("127.0.0.1", Some("verify-ca")), other_ca),
        &["certificate was not trusted", "UnknownIssuer"],
    )
    .await;
    let key_value = format!(
        "host=localhost port=5432 user=postgres password={PASSWORD} dbname={} \
         sslmode=verify-full sslrootcert={}",
        run.database,
        run.ca.display()
    );
    run.connects(
        "key=value form with sslrootcert",
        run.settings(key_value, None),
        true,
    )
    .await;
    run.connects(
        "no sslmode (prefer)",
        run.settings(run.url("127.0.0.1", None), None),
        true,
    )
    .await;
    run.connects(
        "sslmode=disable",
        run.settings(run.url("127.0.0.1", Some("disable")), None),
        false,
    )
    .await;

    admin_run(&[
        "ALTER SYSTEM SET ssl = off".into(),
        "SELECT pg_reload_conf()".into(),
    ])
    .await
    .unwrap();
    wait_for_setting("ssl", "off").await;
    println!("the server now offers no TLS");
    run.connects(
        "sslmode=prefer without TLS on the server",
        run.settings(run.url("127.0.0.1", Some("prefer")), None),
        false,
    )
    .await;
    run.refused(
        "sslmode=require without TLS on the server",
        run.settings(run.url("127.0.0.1", Some("require")), None),
        &["sslmode=require", "server does not support TLS"],
    )
    .await;
    drop(restore);
}
