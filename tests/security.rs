//! Who may talk to a coordinator: a bearer token on every call, and TLS with a certificate the
//! client must trust. Real processes on loopback ports, as a user would run them.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use sweep_shared::auth::ConnectOptions;
use sweep_shared::proto::sweep_service_client::SweepServiceClient;
use sweep_shared::proto::worker_service_client::WorkerServiceClient;
use sweep_shared::proto::{
    AcquireRequest, FetchCheckpointRequest, HeartbeatRequest, ListSweepsRequest, MetricBatch, RegisterRequest,
    StatusRequest, SubmitRequest,
};
use tonic::Code;

const TOKEN: &str = "s3cret-Token_42";

fn small_spec(name: &str) -> String {
    format!(
        "name: {name}\njob: {{kind: quadratic, steps: 5}}\nmethod: grid\nmetric: {{name: loss, goal: minimize}}\n\
         parameters:\n  x: {{values: [0.0, 1.0]}}\n"
    )
}

/// Runs the `sweep` CLI with a clean token environment plus `env`.
fn sweep_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(sweep_bin())
        .args(args)
        .env_remove("SWEEP_TOKEN")
        .env_remove("SWEEP_TOKEN_FILE")
        .env_remove("SWEEP_TLS_CA")
        .envs(env.iter().copied())
        .output()
        .expect("running sweep")
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn status_request() -> StatusRequest {
    StatusRequest { sweep_id: "guarded".into() }
}

fn submit_request(spec: &str) -> SubmitRequest {
    SubmitRequest { spec_yaml: spec.into(), source_name: "test.yaml".into(), extend: false }
}

fn assert_unauthenticated<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    match result {
        Err(status) => assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}"),
        Ok(answer) => panic!("{what} was answered without the right token: {answer:?}"),
    }
}

async fn wait_exit(worker: &mut Worker) -> std::process::ExitStatus {
    wait_until(Duration::from_secs(20), "the worker to exit", || {
        let exited = worker.exited();
        async move { exited }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_right_token_are_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let coordinator = Coordinator::start(dir.path(), &["--token-file", token_file.to_str().unwrap()]);
    let url = coordinator.url.clone();
    let spec = small_spec("guarded");

    // No token, and wrong ones: every user call is refused, and nothing is stored.
    let mut bare = client(&url).await;
    assert_unauthenticated(bare.status(status_request()).await, "status without a token");
    assert_unauthenticated(bare.submit(submit_request(&spec)).await, "submit without a token");
    assert_unauthenticated(bare.list_sweeps(ListSweepsRequest {}).await, "list without a token");
    for wrong in ["wrong", "s3cret-Token_4", "s3cret-Token_421", ""] {
        assert_unauthenticated(
            bare.status(with_token(status_request(), wrong)).await,
            &format!("status with {wrong:?}"),
        );
        assert_unauthenticated(
            bare.submit(with_token(submit_request(&spec), wrong)).await,
            &format!("submit with {wrong:?}"),
        );
    }
    // The token is a bearer token: the bare secret, or under another scheme, is refused too.
    for header in [TOKEN.to_string(), format!("Basic {TOKEN}")] {
        let mut request = tonic::Request::new(status_request());
        request.metadata_mut().insert("authorization", header.parse().unwrap());
        assert_unauthenticated(bare.status(request).await, &format!("authorization: {header}"));
    }

    // The worker side is guarded as well: no trial leaves without the token.
    let mut bare_worker = WorkerServiceClient::connect(url.clone()).await.expect("connect");
    let register = RegisterRequest {
        hostname: "intruder".into(),
        job_kinds: vec!["quadratic".into()],
        devices: vec!["cpu".into()],
        slots: 1,
        version: "0".into(),
    };
    assert_unauthenticated(bare_worker.register(register.clone()).await, "register without a token");
    assert_unauthenticated(
        bare_worker.register(with_token(register.clone(), "wrong")).await,
        "register with a wrong token",
    );
    let acquire = AcquireRequest { worker_id: "w".into(), max_trials: 1, wait_ms: 0 };
    assert_unauthenticated(bare_worker.acquire_trials(acquire).await, "acquire without a token");
    let heartbeat = HeartbeatRequest { worker_id: "w".into(), leases: vec![] };
    assert_unauthenticated(bare_worker.heartbeat(heartbeat).await, "heartbeat without a token");
    let batch = MetricBatch { trial_id: "t".into(), epoch: 1, attempt: 1, seq: 1, points: vec![] };
    assert_unauthenticated(
        bare_worker.stream_metrics(tokio_stream::iter(vec![batch])).await.map(|_| ()),
        "a metric stream without a token",
    );
    let fetch = FetchCheckpointRequest { trial_id: "t".into(), epoch: 1, step: 1 };
    assert_unauthenticated(bare_worker.fetch_checkpoint(fetch).await.map(|_| ()), "a checkpoint fetch without a token");

    // With the token, the same calls work.
    let options = ConnectOptions { url: url.clone(), token: Some(TOKEN.into()), ..Default::default() };
    let mut authed = authed_client(&options).await;
    let sweeps = authed.list_sweeps(ListSweepsRequest {}).await.expect("list with the token").into_inner();
    assert!(sweeps.sweeps.is_empty(), "a refused submit stored a sweep: {sweeps:?}");
    assert_eq!(authed.submit(submit_request(&spec)).await.expect("submit with the token").into_inner().trials, 2);
    let mut raw = bare.status(with_token(status_request(), TOKEN)).await.expect("status with the token").into_inner();
    assert_eq!((raw.total, raw.completed), (2, 0), "{raw:?}");

    // A worker without the token, or with a wrong one, gives up with an error naming the token.
    for (name, env) in [("tokenless", ("SWEEP_TOKEN", "")), ("wrong-token", ("SWEEP_TOKEN", "nope"))] {
        let mut worker = Worker::start_with_env(&url, dir.path(), name, &[], &[env]);
        let exit = wait_exit(&mut worker).await;
        let log = worker.plain_log();
        assert!(!exit.success(), "{name}: the worker ran without the right token:\n{log}");
        assert!(log.contains("token"), "{name}: the worker's error does not mention the token:\n{log}");
    }
    raw = bare.status(with_token(status_request(), TOKEN)).await.expect("status").into_inner();
    assert_eq!((raw.running, raw.completed), (0, 0), "a worker without the token took trials: {raw:?}");

    // With SWEEP_TOKEN it registers and runs the sweep.
    let _worker = Worker::start_with_env(&url, dir.path(), "trusted", &[], &[("SWEEP_TOKEN", TOKEN)]);
    let started = std::time::Instant::now();
    loop {
        let s = authed.status(status_request()).await.expect("status").into_inner();
        if s.finished {
            assert_eq!((s.completed, s.failed), (2, 0), "{s:?}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the trusted worker did not finish the sweep: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The CLI: no token, a wrong one, then the right one from a file and from the environment.
    let out = sweep_cli(&["status", "--coordinator", &url], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("missing token"), "status without a token: {stderr}");
    let out = sweep_cli(&["status", "--coordinator", &url], &[("SWEEP_TOKEN", "nope")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("wrong token"), "status with a wrong token: {stderr}");
    for (args, env) in [
        (vec!["status", "guarded", "--coordinator", &url, "--token-file", token_file.to_str().unwrap()], vec![]),
        (vec!["status", "guarded", "--coordinator", &url], vec![("SWEEP_TOKEN", TOKEN)]),
    ] {
        let out = sweep_cli(&args, &env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("guarded"), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a self-signed certificate");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let (cert_arg, key_arg) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let coordinator = Coordinator::start(dir.path(), &["--tls-cert", cert_arg, "--tls-key", key_arg]);
    let https = format!("https://localhost:{}", coordinator.port());

    // A client that trusts the certificate runs a sweep with a worker that trusts it too.
    let trusted = ConnectOptions { url: https.clone(), tls_ca: Some(cert.clone()), ..Default::default() };
    let mut client = client_with(&trusted).await;
    let sweep = submit(&mut client, &small_spec("secure")).await;
    let _worker = Worker::start(&https, dir.path(), "tls-worker", &["--tls-ca", cert_arg]);
    let status = wait_finished(&mut client, &sweep, Duration::from_secs(30)).await;
    assert_eq!((status.completed, status.failed), (2, 0), "{status:?}");
    let out = sweep_cli(&["status", "secure", "--coordinator", &https, "--tls-ca", cert_arg], &[]);
    assert!(out.status.success(), "sweep status over TLS: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("secure"));

    // Plain HTTP/2 to the TLS port gets nowhere.
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        let mut plain = SweepServiceClient::connect(coordinator.url.clone()).await?;
        plain.status(StatusRequest { sweep_id: "secure".into() }).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .await;
    assert!(!matches!(plain, Ok(Ok(()))), "a plain-text client was answered by the TLS coordinator");

    // TLS without trusting the certificate, or for a name the certificate does not carry, fails
    // on the certificate.
    let addr_https = format!("https://{}", coordinator.addr());
    for (what, options, reason) in [
        ("no CA", ConnectOptions { url: https.clone(), ..Default::default() }, "UnknownIssuer"),
        (
            "wrong name",
            ConnectOptions { url: addr_https.clone(), tls_ca: Some(cert.clone()), ..Default::default() },
            "NotValidForName",
        ),
    ] {
        let attempt = tokio::time::timeout(Duration::from_secs(10), async {
            let endpoint = options.endpoint().map_err(|e| e.to_string())?;
            let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
            SweepServiceClient::new(channel)
                .status(StatusRequest { sweep_id: "secure".into() })
                .await
                .map_err(|e| format!("{e:?}"))?;
            Ok::<_, String>(())
        })
        .await;
        match attempt {
            Ok(Err(error)) => assert!(error.contains(reason), "{what}: failed, but not on the certificate: {error}"),
            other => panic!("{what}: an untrusted TLS connection was not refused: {other:?}"),
        }
    }
    let out = sweep_cli(&["status", "--coordinator", &https], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("invalid peer certificate"), "status without the CA: {stderr}");
    let out = sweep_cli(&["status", "--coordinator", &coordinator.url], &[]);
    assert!(!out.status.success(), "sweep status over plain HTTP succeeded");
}
