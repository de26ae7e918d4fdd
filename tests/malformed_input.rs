//! Malformed and hostile input against a real `sweep coordinator` process: hundreds of broken
//! specs, random bytes as the message of every RPC, well-formed messages with hostile values, and
//! HTTP/2 frames written by hand. Every call must end in a gRPC status or a valid reply within a
//! bound, never a hang, and the coordinator must outlive all of it with what it stored intact.
//!
//! Inputs come from a seeded `ChaCha8Rng`, so a failure reproduces with the same case label.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sweep_shared::proto::sweep_service_client::SweepServiceClient;
use sweep_shared::proto::worker_service_client::WorkerServiceClient;
use sweep_shared::proto::{
    metric_ack, AcquireRequest, BadCheckpointRequest, BestRequest, CancelRequest, CheckpointChunk, CheckpointInfo,
    CompleteRequest, ExportRequest, FailRequest, FetchCheckpointRequest, HeartbeatRequest, LeaseRef, ListSweepsRequest,
    ListTrialsRequest, MetricAck, MetricBatch, MetricPoint, RegisterRequest, ReleaseRequest, StatusRequest,
    SubmitRequest, SweepStatus, TrialLease,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Longest any single call may take before it counts as a hang. The coordinator caps an acquire's
/// wait at 30 s, so only those calls get [`ACQUIRE_CAP_LIMIT`].
const CALL_LIMIT: Duration = Duration::from_secs(20);
const ACQUIRE_CAP_LIMIT: Duration = Duration::from_secs(40);
/// The spec size limit the coordinator enforces (`sweep_shared::limits::MAX_SPEC_BYTES`).
const MAX_SPEC_BYTES: usize = 1024 * 1024;
/// Peak resident memory the coordinator may reach while refusing specs of at most 1 MiB.
const PEAK_RSS_LIMIT_MIB: u64 = 256;

/// Internal statuses that tonic itself produces for undecodable input, as the gRPC status-code
/// guide prescribes (a parse error or a bad compressed flag is INTERNAL). Any other Internal, and
/// every Unknown, is the coordinator's doing and counts as a probable bug.
const FRAMEWORK_INTERNAL: &[&str] =
    &["failed to decode Protobuf message", "Unexpected EOF decoding stream", "protocol error:"];

/// The spec every mutation starts from: 2 x values, 2 y values, 2 seeds, so 8 trials.
const GOOD_SPEC: &str = "\
name: good
job:
  kind: quadratic
  steps: 3
method: grid
metric:
  name: loss
  goal: minimize
parameters:
  x:
    values: [0.1, 0.2]
  y:
    values: [-0.1, 0.3]
seeds: [1, 2]
";
const GOOD_TRIALS: u64 = 8;

// ------------------------------------------------------------------------------------ specs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_malformed_specs_get_clear_errors_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = Coordinator::start(dir.path(), &[]);
    let mut client = client(&coordinator.url).await.max_decoding_message_size(64 << 20);
    let good = client
        .submit(SubmitRequest { spec_yaml: GOOD_SPEC.into(), source_name: "good.yaml".into(), extend: false })
        .await
        .expect("submitting the good spec")
        .into_inner();
    assert_eq!((good.sweep_id.as_str(), good.trials, good.existing), ("good", GOOD_TRIALS, false));
    let before = status(&mut client, "good").await;

    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0001);
    let mut cases: Vec<(String, String)> =
        (0..240).map(|index| mutated_spec(&mut rng, index)).map(|(kind, text)| (kind.to_string(), text)).collect();
    cases.extend(special_specs());
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    let source_names = ["bad.yaml", "", "../../../etc/passwd", "line\nbreaks\r\n.yaml", "\u{202e}lmay.exe"];

    // Sweeps the coordinator holds: the good one plus any mutation that happened to be valid.
    let mut stored: BTreeSet<String> = BTreeSet::from(["good".to_string()]);
    let mut accepted: Vec<String> = Vec::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut line_checked = 0;
    let mut peak_before = 0;
    for (index, (label, spec)) in cases.iter().enumerate() {
        let case = format!("case {index} ({label}, {} bytes)", spec.len());
        let source_name = source_names[index % source_names.len()].to_string();
        let started = Instant::now();
        // A connection of its own per case, so that a case that breaks its connection hides no other.
        let mut case_client = SweepServiceClient::connect(coordinator.url.clone()).await.expect("connecting");
        let call = case_client.submit(SubmitRequest { spec_yaml: spec.clone(), source_name, extend: false });
        let result = tokio::time::timeout(CALL_LIMIT, call).await;
        let refused_cleanly = matches!(&result, Ok(Err(status))
            if matches!(status.code(), Code::InvalidArgument | Code::AlreadyExists));
        if !refused_cleanly {
            // A dying process answers with a broken connection before it can be reaped.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if let Some(death) = exit_report(&mut coordinator, dir.path()) {
            let earlier = failures.join("\n");
            panic!("{death} at {case}\n\nproblems before it:\n{earlier}");
        }
        // The memory a case costs, read as the process's high-water mark after it.
        if let Some(peak) = peak_rss_mib(coordinator.child.id()) {
            if peak > PEAK_RSS_LIMIT_MIB && peak_before <= PEAK_RSS_LIMIT_MIB {
                failures.push(format!("{case}: coordinator peak memory rose to {peak} MiB"));
            }
            peak_before = peak;
        }
        let Ok(result) = result else {
            failures.push(format!("{case}: no answer within {CALL_LIMIT:?}"));
            continue;
        };
        if started.elapsed() > Duration::from_secs(5) {
            failures.push(format!("{case}: took {:?}", started.elapsed()));
        }
        match result {
            Ok(reply) => {
                let reply = reply.into_inner();
                *codes.entry("accepted".into()).or_default() += 1;
                accepted.push(format!(
                    "{case} -> {} ({} trials, existing {})",
                    reply.sweep_id, reply.trials, reply.existing
                ));
                if reply.existing && !stored.contains(&reply.sweep_id) {
                    failures.push(format!("{case}: 'existing' names unknown sweep {}", reply.sweep_id));
                }
                // Genuinely valid: `status` knows it with the same size, and the same text again is
                // recognised as the same sweep.
                let progress = status(&mut client, &reply.sweep_id).await;
                if progress.total != reply.trials || reply.trials == 0 {
                    failures.push(format!("{case}: submit said {} trials, status {progress:?}", reply.trials));
                }
                let again = client
                    .submit(SubmitRequest { spec_yaml: spec.clone(), source_name: "again.yaml".into(), extend: false })
                    .await
                    .map(|r| r.into_inner());
                if !matches!(&again, Ok(a) if a.existing && a.sweep_id == reply.sweep_id) {
                    failures.push(format!("{case}: resubmitting an accepted spec gave {again:?}"));
                }
                stored.insert(reply.sweep_id);
            }
            Err(refusal) => {
                *codes.entry(format!("{:?}", refusal.code())).or_default() += 1;
                let message = refusal.message();
                if message.trim().is_empty() {
                    failures.push(format!("{case}: {:?} with an empty message", refusal.code()));
                }
                match refusal.code() {
                    Code::InvalidArgument if label.starts_with("oversize") => {
                        if !message.contains("limit") {
                            failures.push(format!("{case}: size refusal does not name the limit: {message:?}"));
                        }
                    }
                    Code::InvalidArgument => {
                        line_checked += 1;
                        if let Err(problem) = names_lines_within(message, spec.lines().count()) {
                            failures.push(format!("{case}: {problem}: {}", excerpt(message)));
                        }
                    }
                    Code::AlreadyExists => {
                        let named = stored.iter().any(|name| message.contains(&format!("'{name}'")));
                        if !named {
                            failures.push(format!("{case}: AlreadyExists names no stored sweep: {message:?}"));
                        }
                    }
                    _ => failures.push(format!("{case}: unexpected {:?}: {}", refusal.code(), excerpt(message))),
                }
            }
        }
    }

    // The exact size limit is the limit, not one byte less: the good spec padded with comments to
    // 1 MiB is the good spec.
    let at_limit = pad_with_comments(GOOD_SPEC, MAX_SPEC_BYTES);
    assert_eq!(at_limit.len(), MAX_SPEC_BYTES);
    let reply = client
        .submit(SubmitRequest { spec_yaml: at_limit, source_name: "padded.yaml".into(), extend: false })
        .await
        .expect("a comment-padded good spec of exactly 1 MiB")
        .into_inner();
    assert_eq!((reply.sweep_id.as_str(), reply.existing), ("good", true));

    assert_alive(&mut coordinator, dir.path(), "after every malformed spec");
    let after = status(&mut client, "good").await;
    assert_eq!(counts(&after), counts(&before), "the good sweep changed: {after:?}");
    let sweeps = client.list_sweeps(ListSweepsRequest {}).await.expect("list sweeps").into_inner().sweeps;
    let listed: BTreeSet<String> = sweeps.iter().map(|s| s.sweep_id.clone()).collect();
    assert_eq!(listed, stored, "ListSweeps disagrees with what was accepted");

    eprintln!("{} malformed specs: {codes:?}; {line_checked} messages checked for lines", cases.len());
    eprintln!("accepted as valid: {accepted:#?}; coordinator peak RSS {peak_before} MiB");
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
    assert!(accepted.len() * 20 <= cases.len(), "{} of {} mutations were accepted", accepted.len(), cases.len());
}

/// One random mutation of [`GOOD_SPEC`]; `index` picks the kind so that every kind appears.
fn mutated_spec(rng: &mut ChaCha8Rng, index: usize) -> (&'static str, String) {
    let lines: Vec<&str> = GOOD_SPEC.lines().collect();
    let with_lines = |lines: Vec<String>| lines.join("\n") + "\n";
    let owned = || lines.iter().map(|line| line.to_string()).collect::<Vec<_>>();
    match index % 13 {
        0 => {
            let mut lines = owned();
            lines.remove(rng.random_range(0..lines.len()));
            ("delete a line", with_lines(lines))
        }
        1 => {
            let mut lines = owned();
            let at = rng.random_range(0..lines.len());
            lines.insert(at, lines[at].clone());
            ("duplicate a key", with_lines(lines))
        }
        2 => {
            const WRONG: &[&str] = &[
                "[1, 2]",
                "{a: 1}",
                "true",
                "-5",
                "0",
                "1.5",
                "null",
                "~",
                ".nan",
                "-.inf",
                "\"\"",
                "[]",
                "{}",
                "!!binary aGVsbG8=",
                "!!int 1.5",
                "!custom x",
                "2001-12-14",
                "\"quadratic\"",
                "[[[]]]",
            ];
            let mut lines = owned();
            let valued: Vec<usize> = (0..lines.len()).filter(|&i| !lines[i].trim_end().ends_with(':')).collect();
            let at = *valued.choose(rng).unwrap();
            let key = lines[at].split(':').next().unwrap().to_string();
            lines[at] = format!("{key}: {}", WRONG.choose(rng).unwrap());
            ("wrong type", with_lines(lines))
        }
        3 => {
            let mut lines = owned();
            let at = rng.random_range(0..lines.len());
            let indent = lines[at].len() - lines[at].trim_start().len();
            lines.insert(at, format!("{}colour{}: red", " ".repeat(indent), rng.random::<u16>()));
            ("unknown key", with_lines(lines))
        }
        4 => {
            let target = ["[0.1, 0.2]", "[-0.1, 0.3]", "[1, 2]"].choose(rng).unwrap();
            ("empty values list", GOOD_SPEC.replacen(target, "[]", 1))
        }
        5 => {
            let low: f64 = rng.random_range(0.5..100.0);
            let high = low - rng.random_range(0.001..10.0);
            let random = rng.random_bool(0.5);
            let spec = GOOD_SPEC
                .replace("method: grid", if random { "method: random\nmax_trials: 5" } else { "method: grid" })
                .replace(
                    "    values: [0.1, 0.2]",
                    &format!("    distribution: uniform\n    min: {low}\n    max: {high}"),
                );
            ("min greater than max", spec)
        }
        6 => {
            let kinds = ["no-such-job", "QUADRATIC", "quadratic2", "../quadratic", "\"\"", "'quadratic '", "q/../x"];
            let kind =
                if rng.random_bool(0.3) { random_word(rng, 1..40) } else { kinds.choose(rng).unwrap().to_string() };
            ("unknown job kind", GOOD_SPEC.replace("kind: quadratic", &format!("kind: {kind}")))
        }
        7 => {
            let name = format!("z{}", random_word(rng, 1..20));
            let spec = GOOD_SPEC.replace("parameters:\n", &format!("parameters:\n  {name}:\n    values: [1]\n"));
            ("unknown parameter", spec)
        }
        8 => {
            // Never the whole text nor the text less its final newline: those are the good spec.
            let cut = rng.random_range(0..GOOD_SPEC.len() - 1);
            ("truncated", GOOD_SPEC[..cut].to_string())
        }
        9 => {
            let mut bytes = vec![0u8; rng.random_range(1..4096)];
            rng.fill(&mut bytes[..]);
            ("random bytes", String::from_utf8_lossy(&bytes).into_owned())
        }
        10 => {
            const PIECES: &[&str] = &[
                ":",
                "- ",
                "[",
                "]",
                "{",
                "}",
                ",",
                "&a ",
                "*a",
                "!",
                "|",
                ">",
                "'",
                "\"",
                "%",
                "@",
                "`",
                "#",
                "\n",
                "\t",
                "  ",
                "?",
                "\u{0}",
                "\u{7}",
                "\u{feff}",
                "\u{202e}",
                "\u{fffd}",
                "é",
                "🦀",
                "name",
                "job",
                "kind",
                "quadratic",
                "---",
                "...",
                "<<",
                "=",
                "\\",
                "\r",
            ];
            let text: String = (0..rng.random_range(1..300)).map(|_| *PIECES.choose(rng).unwrap()).collect();
            ("yaml punctuation soup", text)
        }
        11 => {
            const HUGE: &[&str] = &[
                "99999999999999999999999",
                "-9223372036854775809",
                "18446744073709551616",
                "1e400",
                "-1e400",
                "0x1ffffffffffffffff",
                "0o7777777777777777777777777",
                "9223372036854775807",
                "1.7976931348623157e308",
                "4.9e-324",
            ];
            let huge = HUGE.choose(rng).unwrap();
            let spec = match rng.random_range(0..6) {
                0 => GOOD_SPEC.replace("steps: 3", &format!("steps: {huge}")),
                1 => GOOD_SPEC.replace("[0.1, 0.2]", &format!("[0.1, {huge}]")),
                2 => GOOD_SPEC.replace("seeds: [1, 2]", &format!("seeds: {huge}")),
                3 => GOOD_SPEC.replace("seeds: [1, 2]", &format!("seeds: [1, {huge}]")),
                4 => format!("{GOOD_SPEC}max_trials: {huge}\n"),
                _ => GOOD_SPEC.replace("seeds: [1, 2]", &format!("seeds: [1, 2]\nrandom_seed: -{huge}")),
            };
            ("huge number", spec)
        }
        _ => {
            let mut bytes = vec![0u8; rng.random_range(1..16)];
            rng.fill(&mut bytes[..]);
            let garbage = String::from_utf8_lossy(&bytes).into_owned();
            let mut at = rng.random_range(0..GOOD_SPEC.len());
            while !GOOD_SPEC.is_char_boundary(at) {
                at -= 1;
            }
            ("garbage spliced in", format!("{}{garbage}{}", &GOOD_SPEC[..at], &GOOD_SPEC[at..]))
        }
    }
}

/// Hand-written malformed specs, the most dangerous last so that a crash hides the fewest cases.
fn special_specs() -> Vec<(String, String)> {
    let mut specs: Vec<(&str, String)> = vec![
        ("empty document", String::new()),
        ("empty document", "---\n".into()),
        ("empty document", "...\n".into()),
        ("empty document", "~\n".into()),
        ("empty document", "# nothing but a comment\n".into()),
        ("empty document", "   \n\n\t\n".into()),
        ("two documents", format!("{GOOD_SPEC}---\n{}", GOOD_SPEC.replace("name: good", "name: second"))),
        ("top level list", "- name: good\n".into()),
        ("top level scalar", "good\n".into()),
        ("mapping key not a string", "? [a, b]\n: c\nname: x\n".into()),
        ("mapping key not a string", "{[1]: 2}\n".into()),
        ("nul byte", GOOD_SPEC.replace("name: good", "name: go\u{0}od")),
        ("tab indentation", GOOD_SPEC.replace("  kind", "\tkind")),
        ("foreign tag", GOOD_SPEC.replace("steps: 3", "steps: !!python/object/apply:os.system [ls]")),
        ("foreign tag", GOOD_SPEC.replace("kind: quadratic", "kind: !<tag:example.com,2000:job> quadratic")),
        ("bad sweep name", GOOD_SPEC.replace("name: good", "name: ../../etc")),
        ("bad sweep name", GOOD_SPEC.replace("name: good", &format!("name: {}", "a".repeat(65)))),
        ("bad sweep name", GOOD_SPEC.replace("name: good", "name: Good")),
        ("bad sweep name", GOOD_SPEC.replace("name: good", "name: ''")),
        ("duplicate seed", GOOD_SPEC.replace("seeds: [1, 2]", "seeds: [1, 1]")),
        ("duplicate value", GOOD_SPEC.replace("[0.1, 0.2]", "[0.1, 0.1]")),
        ("random without max_trials", GOOD_SPEC.replace("method: grid", "method: random")),
        ("mean_last without last_k", GOOD_SPEC.replace("goal: minimize", "goal: minimize\n  summary: mean_last")),
        ("grid over the trial limit", GOOD_SPEC.replace("seeds: [1, 2]", "seeds: 1000000")),
        ("alias of an unknown anchor", GOOD_SPEC.replace("[0.1, 0.2]", "*nowhere")),
        ("self-referencing anchor", format!("{GOOD_SPEC}loop: &loop [*loop]\n")),
        ("merge key", format!("{GOOD_SPEC}base: &base {{kind: quadratic}}\nother:\n  <<: *base\n")),
        ("unknown key flood", {
            let keys: String = (0..20_000).map(|i| format!("key{i}: {i}\n")).collect();
            format!("{GOOD_SPEC}{keys}")
        }),
        ("error flood in one list", {
            let values: Vec<String> = (0..20_000).map(|i| format!("\"v{i}\"")).collect();
            GOOD_SPEC.replace("[0.1, 0.2]", &format!("[{}]", values.join(", ")))
        }),
        ("oversize by one byte", pad_with_comments(GOOD_SPEC, MAX_SPEC_BYTES + 1)),
        ("oversize 2 MB", pad_with_comments(GOOD_SPEC, 2 * 1024 * 1024)),
        ("oversize 2 MB of one line", format!("name: {}\n", "a".repeat(2 * 1024 * 1024))),
        ("deep flow nesting", format!("name: deep\nx: {}{}\n", "[".repeat(250), "]".repeat(250))),
        ("flow nesting past the scanner's limit", format!("name: deep\nx: {}{}\n", "[".repeat(300), "]".repeat(300))),
        ("deep block mappings", (0..1000).map(|depth| format!("{}k{depth}:\n", " ".repeat(depth))).collect()),
    ];
    for levels in 3..=6 {
        specs.push(("alias bomb", alias_bomb(levels, 10)));
    }
    for depth in [1_000, 10_000, 100_000] {
        specs.push(("deep block sequences", format!("{}x\n", "- ".repeat(depth))));
    }
    specs.into_iter().map(|(label, text)| (label.to_string(), text)).collect()
}

/// A billion-laughs spec: level k is a list of `fan` aliases of level k - 1, so the last level
/// stands for `fan ^ levels` scalars in a text of a few hundred bytes.
fn alias_bomb(levels: usize, fan: usize) -> String {
    let mut text = String::from("name: bomb\nlols:\n");
    text += &format!("  - &l0 [{}]\n", vec!["lol"; fan].join(", "));
    for level in 1..levels {
        text += &format!("  - &l{level} [{}]\n", vec![format!("*l{}", level - 1); fan].join(", "));
    }
    text
}

/// `spec` followed by comment lines up to exactly `len` bytes.
fn pad_with_comments(spec: &str, len: usize) -> String {
    let mut text = spec.to_string();
    while text.len() + 81 <= len {
        text += &format!("#{}\n", "-".repeat(79));
    }
    let rest = len - text.len();
    if rest > 0 {
        text += &format!("#{}", "-".repeat(rest - 1));
    }
    text
}

fn random_word(rng: &mut ChaCha8Rng, len: std::ops::Range<usize>) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..rng.random_range(len)).map(|_| *LETTERS.choose(rng).unwrap() as char).collect()
}

/// Checks that a spec refusal points at lines, each of them inside the spec (or one past its end,
/// where the YAML scanner reports an unexpected end of input).
fn names_lines_within(message: &str, spec_lines: usize) -> Result<(), String> {
    let mut lines = Vec::new();
    let mut rest = message;
    while let Some(at) = rest.find("line ") {
        rest = &rest[at + 5..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(line) = digits.parse::<usize>() {
            lines.push(line);
        }
    }
    if lines.is_empty() {
        return Err("a spec refusal names no line".into());
    }
    match lines.iter().find(|&&line| line == 0 || line > spec_lines + 1) {
        Some(line) => Err(format!("line {line} is outside the spec's {spec_lines} lines")),
        None => Ok(()),
    }
}

fn counts(s: &SweepStatus) -> (u64, u64, u64, u64, u64, u64) {
    (s.total, s.pending, s.running, s.completed, s.failed, s.cancelled)
}

// ------------------------------------------------------------------------------------ rpcs

/// Every method of both services, as `(path, streaming)`; a streaming method is called with a
/// stream of messages and every reply message is read.
const EVERY_RPC: &[(&str, bool)] = &[
    ("/sweep.v1.WorkerService/Register", false),
    ("/sweep.v1.WorkerService/AcquireTrials", false),
    ("/sweep.v1.WorkerService/Heartbeat", false),
    ("/sweep.v1.WorkerService/StreamMetrics", true),
    ("/sweep.v1.WorkerService/CompleteTrial", false),
    ("/sweep.v1.WorkerService/FailTrial", false),
    ("/sweep.v1.WorkerService/ReleaseTrial", false),
    ("/sweep.v1.WorkerService/UploadCheckpoint", true),
    ("/sweep.v1.WorkerService/FetchCheckpoint", true),
    ("/sweep.v1.WorkerService/ReportBadCheckpoint", false),
    ("/sweep.v1.SweepService/Submit", false),
    ("/sweep.v1.SweepService/Status", false),
    ("/sweep.v1.SweepService/ListSweeps", false),
    ("/sweep.v1.SweepService/ListTrials", false),
    ("/sweep.v1.SweepService/Best", false),
    ("/sweep.v1.SweepService/Cancel", false),
    ("/sweep.v1.SweepService/Export", false),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_to_every_endpoint_do_not_crash_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let mut coordinator = Coordinator::start(dir.path(), &[]);
    let mut sweeps = client(&coordinator.url).await.max_decoding_message_size(64 << 20);
    let channel = Channel::from_shared(coordinator.url.clone()).unwrap().connect().await.expect("connecting");
    let mut workers = WorkerServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let mut tally = Tally::default();

    // An acquire that asks to wait u64::MAX ms must come back by the server's cap. It runs alongside
    // everything else so the whole test stays short.
    let idle = register(&mut workers, "idle", vec!["nothing-runs-this".into()], 1).await;
    let capped_waits: Vec<_> = [(idle.clone(), 1), (idle, 0)]
        .into_iter()
        .map(|(worker_id, max_trials)| {
            let mut workers = workers.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let call = workers.acquire_trials(AcquireRequest { worker_id, max_trials, wait_ms: u64::MAX });
                let answer = tokio::time::timeout(ACQUIRE_CAP_LIMIT, call).await;
                (max_trials, started.elapsed(), answer.map(|r| r.map(|r| r.into_inner().leases.len())))
            })
        })
        .collect();

    // 1. Random bytes as the message of every method, plus a few byte strings chosen to be
    //    almost-protobuf.
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0002);
    let mut grpc = tonic::client::Grpc::new(channel.clone()).max_decoding_message_size(64 << 20);
    for &(path, streaming) in EVERY_RPC {
        let mut payloads = crafted_payloads();
        for _ in 0..24 {
            let len = *[0usize, 1, 2, 3, 5, 8, 16, 64, 300, 4096, 70_000].choose(&mut rng).unwrap();
            let mut bytes = vec![0u8; len];
            rng.fill(&mut bytes[..]);
            payloads.push(bytes);
        }
        for (index, payload) in payloads.into_iter().enumerate() {
            let case =
                format!("raw {path} #{index} ({} bytes: {:02x?})", payload.len(), &payload[..payload.len().min(12)]);
            let allowed = [Code::Ok, Code::InvalidArgument, Code::NotFound, Code::FailedPrecondition];
            if streaming {
                let mut messages = vec![payload];
                for _ in 0..rng.random_range(0..4) {
                    let mut bytes = vec![0u8; rng.random_range(0..200)];
                    rng.fill(&mut bytes[..]);
                    messages.push(bytes);
                }
                let answer = bounded(CALL_LIMIT, raw_streaming(&mut grpc, path, messages)).await;
                tally.record(&case, answer, &allowed);
            } else {
                let answer = bounded(CALL_LIMIT, raw_unary(&mut grpc, path, payload)).await;
                tally.record(&case, answer, &allowed);
            }
        }
        assert_alive(&mut coordinator, dir.path(), &format!("after random bytes to {path}"));
    }
    for path in ["/sweep.v1.SweepService/Nope", "/sweep.v1.NoSuchService/Submit", "/", "/sweep.v1.SweepService/"] {
        let answer = bounded(CALL_LIMIT, raw_unary(&mut grpc, path, vec![1, 2, 3])).await;
        tally.record(&format!("raw unknown path {path}"), answer, &[Code::Unimplemented]);
    }
    // Over the 16 MiB message limit: refused by size before anything is decoded.
    let mut huge = vec![0u8; 17 << 20];
    rng.fill(&mut huge[..]);
    let answer = bounded(CALL_LIMIT, raw_unary(&mut grpc, "/sweep.v1.SweepService/Submit", huge)).await;
    tally.record("raw 17 MiB Submit", answer, &[Code::OutOfRange, Code::ResourceExhausted]);
    assert_alive(&mut coordinator, dir.path(), "after random bytes to every method");

    // 2. Well-formed messages with hostile values.
    hostile_values(&coordinator.url, &mut sweeps, &mut workers, &mut tally).await;
    assert_alive(&mut coordinator, dir.path(), "after hostile values");

    // 3. HTTP/2 frames tonic's client never sends.
    let addr = coordinator.url.trim_start_matches("http://").to_string();
    for (case, bytes) in hand_written_connections(&mut rng) {
        match bounded(CALL_LIMIT, exchange_frames(&addr, &bytes)).await {
            Ok(Ok(ending)) => tally.note(&format!("h2 {case}: {ending}")),
            Ok(Err(error)) => tally.note(&format!("h2 {case}: i/o {error}")),
            Err(hang) => tally.suspicious.push(format!("h2 {case}: {hang}")),
        }
    }
    assert_alive(&mut coordinator, dir.path(), "after hand-written HTTP/2");

    for wait in capped_waits {
        let (max_trials, elapsed, answer) = wait.await.unwrap();
        let case = format!("acquire wait_ms u64::MAX max_trials {max_trials}");
        match answer {
            Ok(Ok(leases)) => {
                tally.note(&format!("{case}: empty reply after {elapsed:?}"));
                assert_eq!(leases, 0, "{case}: leases for a kind nothing runs");
                assert!(elapsed < Duration::from_secs(35), "{case}: returned only after {elapsed:?}");
            }
            Ok(Err(status)) => panic!("{case}: {status:?}"),
            Err(_) => panic!("{case}: no answer within {ACQUIRE_CAP_LIMIT:?}: the wait is not capped"),
        }
    }

    // 4. After all that, an ordinary sweep still runs to the end on a worker process.
    assert_alive(&mut coordinator, dir.path(), "before the final sweep");
    let spec = "name: after\njob: {kind: quadratic, steps: 2}\nmethod: grid\nmetric: {name: loss, goal: minimize}\n\
                parameters:\n  x: {values: [0.0, 0.5]}\nseeds: 2\n";
    let sweep = submit(&mut sweeps, spec).await;
    let _worker = Worker::start(&coordinator.url, dir.path(), "worker", &[]);
    let done = wait_finished(&mut sweeps, &sweep, Duration::from_secs(30)).await;
    assert_eq!((done.total, done.completed, done.failed), (4, 4, 0), "{done:?}");
    assert_alive(&mut coordinator, dir.path(), "at the end");

    eprintln!("{} calls: {:?}", tally.calls, tally.by_code);
    eprintln!("internal answers: {:#?}", tally.internal_messages);
    eprintln!("notes:\n{}", tally.notes.join("\n"));
    let log = std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "the coordinator logged a panic:\n{}", tail(&log));
    assert!(
        tally.suspicious.is_empty(),
        "{} suspicious answers:\n{}",
        tally.suspicious.len(),
        tally.suspicious.join("\n")
    );
}

/// Byte strings that are almost a protobuf message: the shapes random bytes rarely hit.
fn crafted_payloads() -> Vec<Vec<u8>> {
    vec![
        vec![],
        // Field 1 as a string of invalid UTF-8.
        vec![0x0a, 0x03, 0xff, 0xfe, 0xfd],
        // Field 1 claiming 2^63 bytes.
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        // A varint that never ends.
        vec![0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        // Field 0, and wire types 6 and 7, which do not exist.
        vec![0x00, 0x01],
        vec![0x0e, 0x01],
        vec![0x0f, 0x01],
        // An end-group with no start, and 200 nested start-groups.
        vec![0x0c],
        [0x0b].repeat(200),
        // Unknown fields only: a valid, empty message.
        vec![0xf8, 0x07, 0x01, 0x82, 0x08, 0x01, 0x41],
        // Field 2 as a packed run of u64::MAX varints.
        [vec![0x12, 0x50], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01].repeat(8)].concat(),
    ]
}

/// How each call ended, and which answers look like bugs.
#[derive(Default)]
struct Tally {
    calls: usize,
    by_code: BTreeMap<String, usize>,
    suspicious: Vec<String>,
    notes: Vec<String>,
    /// Internal and Unknown answers by their message up to the first ':', for the summary.
    internal_messages: BTreeMap<String, usize>,
}

impl Tally {
    /// Records one answer; `allowed` lists the codes the case may end with (`Code::Ok` for a
    /// reply). An Internal that tonic produces for undecodable bytes is always allowed.
    fn record<T: Debug>(&mut self, case: &str, answer: Result<Result<T, Status>, String>, allowed: &[Code]) {
        self.calls += 1;
        let code = match &answer {
            Ok(Ok(_)) => Code::Ok,
            Ok(Err(status)) => status.code(),
            Err(hang) => {
                self.suspicious.push(format!("{case}: {hang}"));
                return;
            }
        };
        *self.by_code.entry(format!("{code:?}")).or_default() += 1;
        if let Ok(Err(status)) = &answer {
            if matches!(status.code(), Code::Internal | Code::Unknown) {
                let message = status.message().split(':').next().unwrap_or_default().to_string();
                *self.internal_messages.entry(message).or_default() += 1;
            }
        }
        let framework = matches!(&answer, Ok(Err(status))
            if status.code() == Code::Internal && FRAMEWORK_INTERNAL.iter().any(|m| status.message().starts_with(m)));
        if !allowed.contains(&code) && !framework {
            let what = match &answer {
                Ok(Ok(reply)) => format!("reply {}", excerpt(&format!("{reply:?}"))),
                Ok(Err(status)) => format!("{:?}: {}", status.code(), excerpt(status.message())),
                Err(_) => unreachable!(),
            };
            self.suspicious.push(format!("{case}: expected one of {allowed:?}, got {what}"));
        }
    }

    fn note(&mut self, note: &str) {
        self.notes.push(note.to_string());
    }
}

/// Runs `call`, turning "no answer within `limit`" into an error instead of a stuck test.
async fn bounded<F: Future>(limit: Duration, call: F) -> Result<F::Output, String> {
    tokio::time::timeout(limit, call).await.map_err(|_| format!("no answer within {limit:?} (hang)"))
}

async fn raw_unary(grpc: &mut tonic::client::Grpc<Channel>, path: &str, payload: Vec<u8>) -> Result<Vec<u8>, Status> {
    grpc.ready().await.map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let path = PathAndQuery::try_from(path.to_string()).expect("a valid path");
    grpc.unary(Request::new(payload), path, RawCodec).await.map(|reply| reply.into_inner())
}

/// Sends `messages` on a client stream and reads every reply message until the server ends.
async fn raw_streaming(
    grpc: &mut tonic::client::Grpc<Channel>,
    path: &str,
    messages: Vec<Vec<u8>>,
) -> Result<Vec<Vec<u8>>, Status> {
    grpc.ready().await.map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let path = PathAndQuery::try_from(path.to_string()).expect("a valid path");
    let mut replies = grpc.streaming(Request::new(tokio_stream::iter(messages)), path, RawCodec).await?.into_inner();
    let mut received = Vec::new();
    while let Some(reply) = replies.message().await? {
        received.push(reply);
    }
    Ok(received)
}

/// Puts a message's bytes on the wire as they are and hands back a reply's bytes undecoded.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut bytes = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

// ------------------------------------------------------------------------------------ hostile values

const IA: &[Code] = &[Code::InvalidArgument];
const NF: &[Code] = &[Code::NotFound];
const FP: &[Code] = &[Code::FailedPrecondition];
const OK: &[Code] = &[Code::Ok];

/// Ids no valid request carries: empty, 10 KB, with '/' or '..', unknown.
fn hostile_ids() -> Vec<(String, &'static [Code])> {
    vec![
        (String::new(), IA),
        ("a".repeat(10 * 1024), IA),
        ("../../etc/passwd".into(), IA),
        ("good/../good".into(), IA),
        ("..".into(), NF),
        (".".into(), NF),
        ("-".into(), NF),
        ("nul\u{0}byte".into(), IA),
        ("ünïcödé".into(), IA),
        ("00000000-0000-0000-0000-000000000000".into(), NF),
    ]
}

async fn hostile_values(
    url: &str,
    sweeps: &mut SweepServiceClient<Channel>,
    workers: &mut WorkerServiceClient<Channel>,
    tally: &mut Tally,
) {
    // A sweep with real trials and a worker holding a real lease, so that hostile reports reach the
    // checks behind the id lookup.
    let spec = "name: hostile\njob: {kind: quadratic, steps: 2}\nmethod: grid\nmetric: {name: loss, goal: minimize}\n\
                parameters:\n  x: {values: [0.1, 0.2, 0.3, 0.4]}\n";
    let hostile = submit(sweeps, spec).await;
    let worker = register(workers, "hostile", vec!["quadratic".into()], 4).await;

    hostile_registrations(workers, tally).await;
    for (id, allowed) in hostile_ids() {
        hostile_id_everywhere(&id, allowed, &worker, sweeps, workers, tally).await;
    }
    hostile_heartbeats(&worker, workers, tally).await;

    // A real lease, then reports that are wrong in one way each.
    let first = acquire_one(workers, &worker).await;
    let lease = LeaseRef { trial_id: first.trial_id.clone(), epoch: u64::MAX };
    let answer =
        bounded(CALL_LIMIT, workers.heartbeat(HeartbeatRequest { worker_id: worker.clone(), leases: vec![lease] }))
            .await;
    match &answer {
        Ok(Ok(reply)) if reply.get_ref().known && reply.get_ref().revoked.len() == 1 => {}
        other => tally.suspicious.push(format!("heartbeat with epoch u64::MAX on a real trial: {other:?}")),
    }
    tally.record("heartbeat epoch u64::MAX", answer, OK);

    hostile_checkpoints(&first, workers, tally).await;
    let acked = hostile_metric_reports(&first, workers, tally).await;
    hostile_fail_and_release(&worker, workers, tally).await;
    hostile_sweep_reads_back(&hostile, acked, sweeps, tally).await;
    hostile_submits(url, tally).await;
}

/// Registrations of hostile shapes: no job kinds, slots 0 and 1e9, fields of 10 KB.
async fn hostile_registrations(workers: &mut WorkerServiceClient<Channel>, tally: &mut Tally) {
    let base = RegisterRequest {
        hostname: "host".into(),
        job_kinds: vec!["quadratic".into()],
        devices: vec!["cpu".into()],
        slots: 1,
        version: "0".into(),
    };
    let registers: Vec<(&str, RegisterRequest, &[Code])> = vec![
        ("no job kinds", RegisterRequest { job_kinds: vec![], ..base.clone() }, IA),
        ("slots 0", RegisterRequest { slots: 0, ..base.clone() }, IA),
        ("slots 1e9", RegisterRequest { slots: 1_000_000_000, ..base.clone() }, IA),
        ("slots u32::MAX", RegisterRequest { slots: u32::MAX, ..base.clone() }, IA),
        ("10 KB hostname", RegisterRequest { hostname: "h".repeat(10 * 1024), ..base.clone() }, IA),
        ("65 job kinds", RegisterRequest { job_kinds: vec!["quadratic".into(); 65], ..base.clone() }, IA),
        ("65 devices", RegisterRequest { devices: vec!["cpu".into(); 65], ..base.clone() }, IA),
        (
            "10 KB job kinds and devices with '/' and '..'",
            RegisterRequest {
                job_kinds: vec!["k/../".repeat(2048), String::new()],
                devices: vec!["../../dev/".repeat(1024), "cuda:18446744073709551615".into()],
                version: "v".repeat(10 * 1024),
                ..base.clone()
            },
            &[Code::Ok, Code::InvalidArgument],
        ),
        (
            "empty hostname",
            RegisterRequest { hostname: String::new(), ..base.clone() },
            &[Code::Ok, Code::InvalidArgument],
        ),
    ];
    for (case, request, allowed) in registers {
        let answer = bounded(CALL_LIMIT, workers.register(request)).await;
        tally.record(&format!("register {case}"), answer, allowed);
    }
}

/// One hostile id on every method that takes an id.
async fn hostile_id_everywhere(
    id: &str,
    allowed: &'static [Code],
    worker: &str,
    sweeps: &mut SweepServiceClient<Channel>,
    workers: &mut WorkerServiceClient<Channel>,
    tally: &mut Tally,
) {
    let short = excerpt(id);
    let acquire = workers.acquire_trials(AcquireRequest { worker_id: id.to_string(), max_trials: 1, wait_ms: 0 });
    tally.record(&format!("acquire worker {short:?}"), bounded(CALL_LIMIT, acquire).await, allowed);
    let heartbeat = workers.heartbeat(HeartbeatRequest { worker_id: id.to_string(), leases: vec![] });
    // An unknown but well-formed worker is told to register again, not refused.
    let heartbeat_allowed = if allowed == NF { OK } else { allowed };
    tally.record(&format!("heartbeat worker {short:?}"), bounded(CALL_LIMIT, heartbeat).await, heartbeat_allowed);
    let lease = LeaseRef { trial_id: id.to_string(), epoch: 1 };
    let heartbeat = workers.heartbeat(HeartbeatRequest { worker_id: worker.to_string(), leases: vec![lease] });
    tally.record(&format!("heartbeat lease {short:?}"), bounded(CALL_LIMIT, heartbeat).await, heartbeat_allowed);
    let complete = workers.complete_trial(CompleteRequest {
        trial_id: id.to_string(),
        epoch: u64::MAX,
        batches: u64::MAX,
        wall_seconds: f64::NAN,
        points: Vec::new(),
    });
    tally.record(&format!("complete trial {short:?}"), bounded(CALL_LIMIT, complete).await, allowed);
    let fail =
        workers.fail_trial(FailRequest { trial_id: id.to_string(), epoch: 0, error: id.to_string(), permanent: true });
    tally.record(&format!("fail trial {short:?}"), bounded(CALL_LIMIT, fail).await, allowed);
    let release =
        workers.release_trial(ReleaseRequest { trial_id: id.to_string(), epoch: u64::MAX, reason: id.to_string() });
    tally.record(&format!("release trial {short:?}"), bounded(CALL_LIMIT, release).await, allowed);
    let fetch = fetch_chunks(workers, FetchCheckpointRequest { trial_id: id.to_string(), epoch: 1, step: u64::MAX });
    tally.record(&format!("fetch checkpoint of trial {short:?}"), bounded(CALL_LIMIT, fetch).await, allowed);
    let bad = workers.report_bad_checkpoint(BadCheckpointRequest {
        trial_id: id.to_string(),
        epoch: 1,
        step: u64::MAX,
        reason: id.to_string(),
    });
    tally.record(&format!("report bad checkpoint of trial {short:?}"), bounded(CALL_LIMIT, bad).await, allowed);
    let upload = workers.upload_checkpoint(tokio_stream::iter(vec![chunk(id, 1, 1, Some(info(0, 1)), vec![0])]));
    tally.record(&format!("upload checkpoint of trial {short:?}"), bounded(CALL_LIMIT, upload).await, allowed);
    let acks = bounded(CALL_LIMIT, stream_batches(workers, vec![batch(id, 1, 1, 1, points(1, "loss"))])).await;
    record_acks(tally, &format!("metrics for trial {short:?}"), acks, &[metric_ack::Status::Rejected]);
    for (method, answer) in [
        (
            "status",
            bounded(CALL_LIMIT, sweeps.status(StatusRequest { sweep_id: id.to_string() })).await.map(drop_reply),
        ),
        (
            "trials",
            bounded(CALL_LIMIT, sweeps.list_trials(ListTrialsRequest { sweep_id: id.to_string() }))
                .await
                .map(drop_reply),
        ),
        (
            "best",
            bounded(
                CALL_LIMIT,
                sweeps.best(BestRequest { sweep_id: id.to_string(), top: u32::MAX, rank_by: "median".into() }),
            )
            .await
            .map(drop_reply),
        ),
        (
            "cancel",
            bounded(CALL_LIMIT, sweeps.cancel(CancelRequest { sweep_id: id.to_string() })).await.map(drop_reply),
        ),
        (
            "export",
            bounded(CALL_LIMIT, sweeps.export(ExportRequest { sweep_id: id.to_string() })).await.map(drop_reply),
        ),
    ] {
        tally.record(&format!("{method} sweep {short:?}"), answer, allowed);
    }
}

/// Heartbeats with too many leases, the most allowed, and an epoch no lease has.
async fn hostile_heartbeats(worker: &str, workers: &mut WorkerServiceClient<Channel>, tally: &mut Tally) {
    let many = |n: usize| (0..n).map(|i| LeaseRef { trial_id: format!("{i:0>128}"), epoch: u64::MAX }).collect();
    let answer =
        bounded(CALL_LIMIT, workers.heartbeat(HeartbeatRequest { worker_id: worker.to_string(), leases: many(4097) }))
            .await;
    tally.record("heartbeat 4097 leases", answer, IA);
    let answer =
        bounded(CALL_LIMIT, workers.heartbeat(HeartbeatRequest { worker_id: worker.to_string(), leases: many(4096) }))
            .await;
    if let Ok(Ok(reply)) = &answer {
        let reply = reply.get_ref();
        if !reply.known || reply.revoked.len() != 4096 {
            tally.suspicious.push(format!(
                "heartbeat 4096 unknown leases: known {}, {} revoked",
                reply.known,
                reply.revoked.len()
            ));
        }
    }
    tally.record("heartbeat 4096 leases", answer, OK);
}

/// Checkpoint uploads, fetches and bad-checkpoint reports, each wrong in one way, on a real lease.
async fn hostile_checkpoints(lease: &TrialLease, workers: &mut WorkerServiceClient<Channel>, tally: &mut Tally) {
    let (trial, epoch, attempt) = (lease.trial_id.as_str(), lease.epoch, lease.attempt);
    let good_info = || Some(info(1, 4));
    let uploads: Vec<(&str, Vec<CheckpointChunk>, &[Code])> = vec![
        ("no chunks", vec![], IA),
        ("no info", vec![chunk(trial, epoch, attempt, None, vec![0; 4])], IA),
        (
            "sha256 not hex",
            vec![chunk(
                trial,
                epoch,
                attempt,
                Some(CheckpointInfo { sha256: "z".repeat(64), ..info(1, 4) }),
                vec![0; 4],
            )],
            IA,
        ),
        (
            "sha256 of 10 KB",
            vec![chunk(
                trial,
                epoch,
                attempt,
                Some(CheckpointInfo { sha256: "a".repeat(10 * 1024), ..info(1, 4) }),
                vec![],
            )],
            IA,
        ),
        ("bytes u64::MAX", vec![chunk(trial, epoch, attempt, Some(info(1, u64::MAX)), vec![0; 4])], IA),
        ("step past i64::MAX", vec![chunk(trial, epoch, attempt, Some(info(i64::MAX as u64 + 1, 4)), vec![0; 4])], IA),
        ("epoch u64::MAX", vec![chunk(trial, u64::MAX, attempt, good_info(), vec![0; 4])], FP),
        ("attempt u32::MAX", vec![chunk(trial, epoch, u32::MAX, good_info(), vec![0; 4])], FP),
        (
            "longer than announced",
            vec![chunk(trial, epoch, attempt, good_info(), vec![0; 4]), chunk("", 0, 0, None, vec![0; 6])],
            IA,
        ),
        ("cut short", vec![chunk(trial, epoch, attempt, Some(info(1, 100)), vec![0; 10])], IA),
        ("checksum mismatch", vec![chunk(trial, epoch, attempt, good_info(), vec![0; 4])], IA),
        (
            "later chunks naming another trial and info",
            vec![
                chunk(trial, epoch, attempt, good_info(), vec![0; 2]),
                chunk("../x", u64::MAX, u32::MAX, Some(info(9, 9)), vec![0; 2]),
            ],
            IA,
        ),
    ];
    for (case, chunks, allowed) in uploads {
        let answer = bounded(CALL_LIMIT, workers.upload_checkpoint(tokio_stream::iter(chunks))).await;
        tally.record(&format!("upload {case}"), answer, allowed);
    }
    for (case, step, epoch) in
        [("step u64::MAX", u64::MAX, epoch), ("epoch u64::MAX", 1, u64::MAX), ("step 0", 0, epoch)]
    {
        let fetch = fetch_chunks(workers, FetchCheckpointRequest { trial_id: trial.into(), epoch, step });
        tally.record(
            &format!("fetch {case}"),
            bounded(CALL_LIMIT, fetch).await,
            &[Code::NotFound, Code::FailedPrecondition],
        );
        let bad = workers.report_bad_checkpoint(BadCheckpointRequest {
            trial_id: trial.into(),
            epoch,
            step,
            reason: "\u{0}".repeat(1 << 20),
        });
        tally.record(
            &format!("report bad checkpoint {case}"),
            bounded(CALL_LIMIT, bad).await,
            &[Code::NotFound, Code::FailedPrecondition],
        );
    }
}

/// Metric batches and completions, each wrong in one way, on a real lease. Returns how many points
/// the coordinator acknowledged as stored, and how many of those were NaN.
async fn hostile_metric_reports(
    lease: &TrialLease,
    workers: &mut WorkerServiceClient<Channel>,
    tally: &mut Tally,
) -> (usize, usize) {
    let (trial, epoch, attempt) = (lease.trial_id.as_str(), lease.epoch, lease.attempt);
    use metric_ack::Status as Ack;
    let long_name = "n".repeat(1024);
    let mut step_too_big = points(1, "loss");
    step_too_big[0].step = i64::MAX as u64 + 1;
    let refused: Vec<(&str, MetricBatch, &[Ack])> = vec![
        ("epoch u64::MAX", batch(trial, u64::MAX, attempt, 1, points(3, "loss")), &[Ack::StaleEpoch]),
        ("epoch 0", batch(trial, 0, attempt, 1, points(3, "loss")), &[Ack::StaleEpoch]),
        ("attempt u32::MAX", batch(trial, epoch, u32::MAX, 1, points(3, "loss")), &[Ack::Rejected]),
        ("seq 0", batch(trial, epoch, attempt, 0, points(3, "loss")), &[Ack::Rejected]),
        ("seq u64::MAX", batch(trial, epoch, attempt, u64::MAX, points(3, "loss")), &[Ack::Gap]),
        ("1 KB metric names", batch(trial, epoch, attempt, 1, points(10, &long_name)), &[Ack::Rejected]),
        ("empty metric name", batch(trial, epoch, attempt, 1, points(10, "")), &[Ack::Rejected]),
        ("step past i64::MAX", batch(trial, epoch, attempt, 1, step_too_big), &[Ack::Rejected]),
        ("100 001 points", batch(trial, epoch, attempt, 1, points(100_001, "loss")), &[Ack::Rejected]),
    ];
    for (case, report, allowed) in refused {
        let acks = bounded(CALL_LIMIT, stream_batches(workers, vec![report])).await;
        record_acks(tally, &format!("metrics {case}"), acks, allowed);
    }

    // Values a diverging job really reports, each class in its own batch so that one refusal does
    // not hide the others. A metric value is any f64: the coordinator must store them all.
    let mut extremes = points(100_000, "loss");
    let finite = [f64::MAX, -f64::MAX, -0.0, f64::MIN_POSITIVE / 2.0, 1e-300];
    for (index, point) in extremes.iter_mut().enumerate() {
        point.value = finite[index % finite.len()];
        point.wall_time_us = if index % 2 == 0 { i64::MIN } else { i64::MAX };
    }
    extremes[99_999].step = i64::MAX as u64;
    let with_values = |values: &[f64]| -> Vec<MetricPoint> {
        let point = |(step, &value): (usize, &f64)| MetricPoint {
            step: step as u64,
            name: "loss".into(),
            value,
            wall_time_us: 0,
        };
        values.iter().enumerate().map(point).collect()
    };
    let mut held = 0u64;
    let mut stored_points = 0usize;
    let mut stored_nan = 0usize;
    for (case, points) in [
        ("100 000 finite extremes", extremes.clone()),
        ("infinities", with_values(&[f64::INFINITY, f64::NEG_INFINITY])),
        ("NaN", with_values(&[f64::NAN, 1.0, -f64::NAN])),
        ("no points", vec![]),
    ] {
        let count = points.len();
        let nan = points.iter().filter(|point| point.value.is_nan()).count();
        let report = batch(trial, epoch, attempt, held + 1, points);
        let acks = bounded(CALL_LIMIT, stream_batches(workers, vec![report])).await;
        if matches!(&acks, Ok(Ok(acks)) if acks.len() == 1 && acks[0].status() == Ack::Stored) {
            held += 1;
            stored_points += count;
            stored_nan += nan;
        }
        record_acks(tally, &format!("metrics {case}"), acks, &[Ack::Stored]);
    }
    let resent = batch(trial, epoch, attempt, 1, extremes);
    let acks = bounded(CALL_LIMIT, stream_batches(workers, vec![resent])).await;
    record_acks(tally, "metrics batch 1 again", acks, &[Ack::Stored]);
    let ahead = batch(trial, epoch, attempt, held + 2, points(1, "loss"));
    let acks = bounded(CALL_LIMIT, stream_batches(workers, vec![ahead])).await;
    record_acks(tally, "metrics a batch past a gap", acks, &[Ack::Gap]);

    // 100 000 points with 1 KB names is ~100 MB, past the 16 MiB message limit. The contract is one
    // ack per batch: a refusal must reach the worker, as an ack or as the stream's status.
    let oversize = batch(trial, epoch, attempt, held + 1, points(100_000, &long_name));
    let acks = bounded(CALL_LIMIT, stream_batches(workers, vec![oversize])).await;
    let case = "metrics 100 000 points with 1 KB names (~100 MB)";
    match &acks {
        Ok(Ok(received)) if received.is_empty() => {
            tally.suspicious.push(format!("{case}: the stream ends cleanly with no ack and no error status"))
        }
        Ok(Ok(received)) => record_acks(tally, case, Ok(Ok(received.clone())), &[Ack::Rejected]),
        _ => {}
    }
    let answer = acks.map(|r| r.map(|acks| acks.len()));
    tally.record(case, answer, &[Code::Ok, Code::OutOfRange, Code::ResourceExhausted, Code::InvalidArgument]);

    let complete = |epoch: u64, batches: u64, wall_seconds: f64| CompleteRequest {
        trial_id: trial.into(),
        epoch,
        batches,
        wall_seconds,
        points: Vec::new(),
    };
    for (case, request, allowed) in [
        ("batches u64::MAX", complete(epoch, u64::MAX, 1.0), FP),
        ("epoch u64::MAX", complete(u64::MAX, held, 1.0), FP),
        ("wall_seconds NaN", complete(epoch, held, f64::NAN), OK),
        ("twice", complete(epoch, held, f64::INFINITY), FP),
    ] {
        tally.record(&format!("complete {case}"), bounded(CALL_LIMIT, workers.complete_trial(request)).await, allowed);
    }

    (stored_points, stored_nan)
}

/// A second lease fails with a 1 MB error; a third is handed back with a 1 MB reason.
async fn hostile_fail_and_release(worker: &str, workers: &mut WorkerServiceClient<Channel>, tally: &mut Tally) {
    let second = acquire_one(workers, worker).await;
    let fail = FailRequest {
        trial_id: second.trial_id.clone(),
        epoch: second.epoch,
        error: "é".repeat(512 * 1024),
        permanent: false,
    };
    tally.record("fail with a 1 MB error", bounded(CALL_LIMIT, workers.fail_trial(fail)).await, OK);
    let fail =
        FailRequest { trial_id: second.trial_id.clone(), epoch: second.epoch, error: String::new(), permanent: true };
    tally.record("fail the same lease again", bounded(CALL_LIMIT, workers.fail_trial(fail)).await, FP);
    let third = acquire_one(workers, worker).await;
    let release =
        ReleaseRequest { trial_id: third.trial_id.clone(), epoch: third.epoch, reason: "\u{0}".repeat(1 << 20) };
    tally.record("release with a 1 MB reason", bounded(CALL_LIMIT, workers.release_trial(release)).await, OK);
    let release = ReleaseRequest { trial_id: third.trial_id.clone(), epoch: third.epoch, reason: String::new() };
    tally.record("release the same lease again", bounded(CALL_LIMIT, workers.release_trial(release)).await, FP);
    let greedy = AcquireRequest { worker_id: worker.to_string(), max_trials: u32::MAX, wait_ms: 0 };
    tally.record("acquire max_trials u32::MAX", bounded(CALL_LIMIT, workers.acquire_trials(greedy)).await, OK);
}

/// What the hostile reports left behind still reads back and exports; `acked` is what
/// [`hostile_metric_reports`] returned.
async fn hostile_sweep_reads_back(
    hostile: &str,
    acked: (usize, usize),
    sweeps: &mut SweepServiceClient<Channel>,
    tally: &mut Tally,
) {
    let (stored_points, stored_nan) = acked;
    let answer = bounded(CALL_LIMIT, sweeps.status(StatusRequest { sweep_id: hostile.to_string() })).await;
    tally.record("status of the hostile sweep", answer.map(|r| r.map(|r| r.into_inner())), OK);
    let answer = bounded(CALL_LIMIT, sweeps.list_trials(ListTrialsRequest { sweep_id: hostile.to_string() })).await;
    tally.record("trials of the hostile sweep", answer.map(|r| r.map(|r| r.into_inner().trials.len())), OK);
    let answer = bounded(
        CALL_LIMIT,
        sweeps.best(BestRequest { sweep_id: hostile.to_string(), top: u32::MAX, rank_by: "bound".into() }),
    )
    .await;
    tally.record("best of the hostile sweep", answer.map(|r| r.map(|r| r.into_inner().configs.len())), OK);
    let answer = bounded(CALL_LIMIT, sweeps.export(ExportRequest { sweep_id: hostile.to_string() })).await;
    if let Ok(Ok(export)) = &answer {
        let export = export.get_ref();
        if export.metric_rows != stored_points as u64 {
            let rows = export.metric_rows;
            tally
                .suspicious
                .push(format!("export of the hostile sweep holds {rows} metric rows, {stored_points} were acked"));
        }
        if !Path::new(&export.metrics_dir).is_dir() {
            tally.suspicious.push(format!("export of the hostile sweep names a missing metrics dir: {export:?}"));
        }
        let rows =
            if Path::new(&export.metrics_dir).is_dir() { read_metrics(Path::new(&export.metrics_dir)) } else { vec![] };
        let nan = rows.iter().filter(|row| row.value.is_nan()).count();
        tally.note(&format!("hostile sweep exported {} metric rows, {nan} of them NaN", rows.len()));
        if rows.len() != stored_points || nan != stored_nan {
            tally
                .suspicious
                .push(format!("exported {} rows ({nan} NaN); acked {stored_points} ({stored_nan} NaN)", rows.len()));
        }
    }
    tally.record("export of the hostile sweep", answer.map(|r| r.map(|r| r.into_inner())), OK);
    for case in ["cancel the hostile sweep", "cancel it again"] {
        let answer = bounded(CALL_LIMIT, sweeps.cancel(CancelRequest { sweep_id: hostile.to_string() })).await;
        tally.record(case, answer, OK);
    }
}

/// Submits with hostile source names, and a spec that is nothing but NUL bytes.
async fn hostile_submits(url: &str, tally: &mut Tally) {
    for (case, source_name, spec_yaml) in [
        ("a 10 KB source name", "s".repeat(10 * 1024), "name: [".to_string()),
        ("a source name with '/' and '..'", "../../etc/passwd".into(), String::new()),
        // Every error line names the source: a 64 KB name makes a message past HTTP/2's header limits.
        ("a 64 KB source name", "s".repeat(64 * 1024), "name: [".to_string()),
        ("NUL bytes", "nul.yaml".into(), "\u{0}".repeat(1000)),
    ] {
        // A connection of its own per case, so that a case that breaks its connection hides no other.
        let mut submitter = SweepServiceClient::connect(url.to_string()).await.expect("connecting");
        let answer =
            bounded(CALL_LIMIT, submitter.submit(SubmitRequest { spec_yaml, source_name, extend: false })).await;
        tally.record(&format!("submit {case}"), answer, IA);
    }
}

fn drop_reply<T>(answer: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    answer.map(|_| ())
}

async fn register(
    workers: &mut WorkerServiceClient<Channel>,
    hostname: &str,
    job_kinds: Vec<String>,
    slots: u32,
) -> String {
    let request = RegisterRequest {
        hostname: hostname.into(),
        job_kinds,
        devices: vec!["cpu".into()],
        slots,
        version: "0".into(),
    };
    workers.register(request).await.expect("registering").into_inner().worker_id
}

async fn acquire_one(workers: &mut WorkerServiceClient<Channel>, worker: &str) -> TrialLease {
    let request = AcquireRequest { worker_id: worker.into(), max_trials: 1, wait_ms: 5_000 };
    let leases = workers.acquire_trials(request).await.expect("acquiring a trial").into_inner().leases;
    leases.into_iter().next().expect("a lease on the hostile sweep")
}

fn info(step: u64, bytes: u64) -> CheckpointInfo {
    CheckpointInfo { step, sha256: "0".repeat(64), bytes, attempt: 1 }
}

fn chunk(trial_id: &str, epoch: u64, attempt: u32, info: Option<CheckpointInfo>, data: Vec<u8>) -> CheckpointChunk {
    CheckpointChunk { trial_id: trial_id.into(), epoch, attempt, info, data }
}

/// Fetches a checkpoint and reads every chunk until the coordinator ends the stream.
async fn fetch_chunks(
    workers: &mut WorkerServiceClient<Channel>,
    request: FetchCheckpointRequest,
) -> Result<usize, Status> {
    let mut chunks = workers.fetch_checkpoint(request).await?.into_inner();
    let mut received = 0;
    while chunks.message().await?.is_some() {
        received += 1;
    }
    Ok(received)
}

fn points(n: usize, name: &str) -> Vec<MetricPoint> {
    (0..n).map(|step| MetricPoint { step: step as u64, name: name.into(), value: 1.0, wall_time_us: 0 }).collect()
}

fn batch(trial_id: &str, epoch: u64, attempt: u32, seq: u64, points: Vec<MetricPoint>) -> MetricBatch {
    MetricBatch { trial_id: trial_id.into(), epoch, attempt, seq, points }
}

/// Streams `batches` and collects every ack until the coordinator ends the stream.
async fn stream_batches(
    workers: &mut WorkerServiceClient<Channel>,
    batches: Vec<MetricBatch>,
) -> Result<Vec<MetricAck>, Status> {
    let mut acks = workers.stream_metrics(tokio_stream::iter(batches)).await?.into_inner();
    let mut received = Vec::new();
    while let Some(ack) = acks.message().await? {
        received.push(ack);
    }
    Ok(received)
}

fn record_acks(
    tally: &mut Tally,
    case: &str,
    acks: Result<Result<Vec<MetricAck>, Status>, String>,
    allowed: &[metric_ack::Status],
) {
    if let Ok(Ok(acks)) = &acks {
        let statuses: Vec<_> = acks.iter().map(|ack| ack.status()).collect();
        // One batch sent, so exactly one ack.
        if statuses.len() != 1 || !allowed.contains(&statuses[0]) {
            let messages: Vec<&str> = acks.iter().map(|ack| ack.message.as_str()).collect();
            tally.suspicious.push(format!("{case}: acks {statuses:?} ({messages:?}), expected one of {allowed:?}"));
        }
    }
    tally.record(case, acks.map(|r| r.map(|acks| acks.len())), OK);
}

// ------------------------------------------------------------------------------------ raw HTTP/2

/// Connections written byte by byte: garbage instead of HTTP/2, and gRPC requests whose framing no
/// client library would produce.
fn hand_written_connections(rng: &mut ChaCha8Rng) -> Vec<(String, Vec<u8>)> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut garbage = vec![0u8; 4096];
    rng.fill(&mut garbage[..]);
    let settings = frame(4, 0, 0, &[]);
    let request = |path: &str, content_type: &str, grpc_frame: &[u8]| {
        let mut headers = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
            ("content-type", content_type),
            ("te", "trailers"),
        ] {
            headers.extend([0x00, name.len() as u8]);
            headers.extend(name.as_bytes());
            headers.push(value.len() as u8);
            headers.extend(value.as_bytes());
        }
        [PREFACE, settings.as_slice(), &frame(1, 0x4, 1, &headers), &frame(0, 0x1, 1, grpc_frame)].concat()
    };
    let submit = "/sweep.v1.SweepService/Submit";
    let grpc = "application/grpc";
    vec![
        ("random bytes, no preface".into(), garbage.clone()),
        ("preface then random bytes".into(), [PREFACE, garbage.as_slice()].concat()),
        ("compressed flag without grpc-encoding".into(), request(submit, grpc, &[1, 0, 0, 0, 2, 0x0a, 0x00])),
        ("compressed flag 7".into(), request(submit, grpc, &[7, 0, 0, 0, 0])),
        ("length u32::MAX".into(), request(submit, grpc, &[0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3])),
        ("length 100 with 3 bytes".into(), request(submit, grpc, &[0, 0, 0, 0, 100, 1, 2, 3])),
        ("half a length prefix".into(), request(submit, grpc, &[0, 0, 0])),
        ("no message at all".into(), request(submit, grpc, &[])),
        ("two messages to a unary method".into(), request(submit, grpc, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
        ("text/plain content type".into(), request(submit, "text/plain", &[0, 0, 0, 0, 0])),
        (
            "metrics stream cut mid-message".into(),
            request("/sweep.v1.WorkerService/StreamMetrics", grpc, &[0, 0, 0, 1, 0, 0x0a]),
        ),
    ]
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    bytes.extend([kind, flags]);
    bytes.extend(stream.to_be_bytes());
    bytes.extend(payload);
    bytes
}

/// Writes `bytes` and reads frames back until stream 1 ends, the server says goodbye or hangs up.
async fn exchange_frames(addr: &str, bytes: &[u8]) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(bytes).await?;
    loop {
        let mut header = [0u8; 9];
        if stream.read_exact(&mut header).await.is_err() {
            return Ok("connection closed".into());
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let (kind, flags) = (header[3], header[4]);
        let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await?;
        match kind {
            4 if flags & 1 == 0 => stream.write_all(&frame(4, 1, 0, &[])).await?,
            6 if flags & 1 == 0 => stream.write_all(&frame(6, 1, 0, &payload)).await?,
            7 => return Ok("goaway".into()),
            3 if id == 1 => return Ok("stream reset".into()),
            0 | 1 if id == 1 && flags & 1 == 1 => return Ok("answered".into()),
            _ => {}
        }
    }
}

// ------------------------------------------------------------------------------------ process checks

/// Panics with the log's tail when the coordinator process has exited.
fn assert_alive(coordinator: &mut Coordinator, dir: &Path, when: &str) {
    if let Some(death) = exit_report(coordinator, dir) {
        panic!("{death} {when}");
    }
}

/// How the coordinator process ended, with its log's tail; `None` while it runs.
fn exit_report(coordinator: &mut Coordinator, dir: &Path) -> Option<String> {
    let exit = coordinator.child.try_wait().expect("polling the coordinator")?;
    let log = std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default();
    Some(format!("the coordinator exited ({exit}); its log ends:\n{}\n", tail(&log)))
}

/// The most memory the process has held, from /proc (Linux only).
fn peak_rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(3000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn excerpt(text: &str) -> String {
    let short: String = text.chars().take(300).collect();
    if short.len() < text.len() {
        format!("{short}... ({} bytes)", text.len())
    } else {
        short
    }
}
