//! The per-request fault proxy of `drkit_tests::fault_proxy`, against the real moto (and
//! s3s-fs) servers through the AWS SDK and through drkit's own S3 storage: plain
//! pass-through (keep-alive, a 20 MiB multipart upload), a lost answer to a PUT that landed,
//! an injected 500, a reset, a delay, and rules changed while the proxy runs.

use std::time::{Duration, Instant};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use drkit_tests::fault_proxy::{Action, HttpFaultProxy, Rule, RuleStats};
use drkit_tests::storage::{moto, s3s, Pattern, S3Server};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

/// A client through `endpoint` that makes one attempt only: it sees the first fault.
fn no_retry_client(server: &S3Server, endpoint: &str) -> aws_sdk_s3::Client {
    let conf = server
        .admin_at(endpoint)
        .config()
        .to_builder()
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Whether `key` exists in `bucket`, asked of the server directly.
async fn exists(server: &S3Server, bucket: &str, key: &str) -> bool {
    match server
        .admin()
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
    {
        Ok(_) => true,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => false,
        Err(e) => panic!("HEAD {key} on the server: {e:?}"),
    }
}

async fn get_bytes(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {key}: {e:?}"))
        .body
        .collect()
        .await
        .expect("GET body")
        .into_bytes()
        .to_vec()
}

/// `keeps_alive`: the server keeps connections open (s3s-fs; moto's werkzeug answers
/// `Connection: close` to every request, and the proxy passes that on).
async fn pass_through(server: S3Server, keeps_alive: bool) {
    let bucket = server.new_bucket(false).await;
    let proxy = HttpFaultProxy::start(&server.endpoint);
    let client = server.admin_at(proxy.endpoint());

    for i in 0..5 {
        client
            .put_object()
            .bucket(&bucket)
            .key(format!("small/{i}.txt"))
            .body(ByteStream::from(format!("object {i}").into_bytes()))
            .send()
            .await
            .expect("PUT through the proxy");
    }
    assert_eq!(
        get_bytes(&client, &bucket, "small/3.txt").await,
        b"object 3"
    );
    let listed = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("small/")
        .send()
        .await
        .expect("LIST through the proxy");
    assert_eq!(listed.contents().len(), 5);
    let head = client
        .head_object()
        .bucket(&bucket)
        .key("small/0.txt")
        .send()
        .await
        .expect("HEAD through the proxy");
    assert_eq!(head.content_length(), Some(8));

    // A 20 MiB multipart upload: four parts of 5 MiB.
    let data = Pattern::bytes(7, 20 * MIB);
    let key = "big/object.bin";
    let up = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .expect("CreateMultipartUpload");
    let upload_id = up.upload_id().expect("upload id").to_string();
    let mut parts = Vec::new();
    for (i, chunk) in data.chunks(5 * MIB).enumerate() {
        let n = i as i32 + 1;
        let part = client
            .upload_part()
            .bucket(&bucket)
            .key(key)
            .upload_id(&upload_id)
            .part_number(n)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("UploadPart {n}: {e:?}"));
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .set_e_tag(part.e_tag().map(str::to_string))
                .build(),
        );
    }
    let completed = client
        .complete_multipart_upload()
        .bucket(&bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await;
    match completed {
        Ok(_) => {}
        // moto answers with another XML root than S3 (`...Response`, not `...Result`): the
        // SDK cannot read its 200; the GET below says whether the object is whole.
        Err(e)
            if server.name == "moto"
                && e.raw_response().map(|r| r.status().as_u16()) == Some(200) => {}
        Err(e) => panic!("CompleteMultipartUpload: {e:?}"),
    }
    let back = get_bytes(&client, &bucket, key).await;
    assert_eq!(back.len(), data.len());
    assert_eq!(
        Sha256::digest(&back),
        Sha256::digest(&data),
        "20 MiB object"
    );

    let requests = proxy.requests();
    assert_eq!(
        requests.len(),
        5 + 1 + 1 + 1 + 1 + 4 + 1 + 1,
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.status == Some(200) && r.rule.is_none()),
        "{requests:#?}"
    );
    assert_eq!(proxy.count("PUT", "partNumber="), 4);
    if keeps_alive {
        assert!(
            proxy.connections() < requests.len(),
            "{} connections for {} sequential requests: keep-alive is not working",
            proxy.connections(),
            requests.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_on_moto_carries_a_20_mib_multipart_upload() {
    pass_through(moto(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_on_s3s_keeps_connections_and_carries_a_20_mib_multipart_upload() {
    pass_through(s3s(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_response_loses_the_answer_but_the_put_lands() {
    let server = moto();
    let bucket = server.new_bucket(false).await;
    let proxy = HttpFaultProxy::start(&server.endpoint);

    // One attempt: the client sees an error, yet the object is on the server.
    let id = proxy.add_rule(Rule::new("PUT", "/manifest.json", Action::CutResponse));
    let once = no_retry_client(&server, proxy.endpoint());
    let err = once
        .put_object()
        .bucket(&bucket)
        .key("job/1/manifest.json")
        .body(ByteStream::from_static(b"{\"lost\": \"answer\"}"))
        .send()
        .await
        .expect_err("the answer was cut");
    assert!(
        err.as_service_error().is_none(),
        "a lost answer is no service error: {err:?}"
    );
    assert!(exists(&server, &bucket, "job/1/manifest.json").await);
    assert_eq!(proxy.stats(id), RuleStats { seen: 1, fired: 1 });
    let last = proxy.requests().pop().unwrap();
    assert_eq!(
        (last.action, last.status),
        (Some(Action::CutResponse), Some(200))
    );

    // Other requests pass: a GET of it, and a PUT of another key.
    assert_eq!(
        get_bytes(&once, &bucket, "job/1/manifest.json").await,
        b"{\"lost\": \"answer\"}"
    );
    once.put_object()
        .bucket(&bucket)
        .key("job/1/data.bin")
        .body(ByteStream::from_static(b"data"))
        .send()
        .await
        .expect("a PUT the rule does not match");
    assert_eq!(proxy.stats(id), RuleStats { seen: 1, fired: 1 });

    // With the SDK's retries, a cut on the first attempt only: the retry goes through.
    proxy.remove_rule(id);
    let first = proxy.add_rule(Rule::new("PUT", "/manifest.json", Action::CutResponse).nth(1));
    server
        .admin_at(proxy.endpoint())
        .put_object()
        .bucket(&bucket)
        .key("job/2/manifest.json")
        .body(ByteStream::from_static(b"{}"))
        .send()
        .await
        .expect("the retry after the lost answer succeeds");
    assert_eq!(proxy.stats(first), RuleStats { seen: 2, fired: 1 });
    assert_eq!(proxy.stats(id), RuleStats { seen: 1, fired: 1 }, "removed");
    assert!(exists(&server, &bucket, "job/2/manifest.json").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_500_is_answered_by_the_proxy_and_nothing_lands() {
    let server = moto();
    let bucket = server.new_bucket(false).await;
    let proxy = HttpFaultProxy::start(&server.endpoint);
    let id = proxy.add_rule(Rule::new("put", "/manifest.json", Action::Status500));
    let once = no_retry_client(&server, proxy.endpoint());
    let err = once
        .put_object()
        .bucket(&bucket)
        .key("job/1/manifest.json")
        .body(ByteStream::from_static(b"{}"))
        .send()
        .await
        .expect_err("500");
    let service = err.as_service_error().expect("a service error");
    assert_eq!(
        aws_sdk_s3::error::ProvideErrorMetadata::code(service),
        Some("InternalError"),
        "{err:?}"
    );
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert!(!exists(&server, &bucket, "job/1/manifest.json").await);
    assert_eq!(proxy.stats(id), RuleStats { seen: 1, fired: 1 });

    // Other requests pass. (The SDK does not reuse a connection after a 5xx: it "poisons"
    // it; the raw-socket test below checks that the proxy keeps it usable.)
    once.put_object()
        .bucket(&bucket)
        .key("job/1/other")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .expect("a request after the 500");
    assert_eq!(proxy.requests()[1].status, Some(200));

    // A HEAD answered 500 has no body; the SDK retries a 500 once and gets the object.
    proxy.set_rules([Rule::new("HEAD", "job/1/other", Action::Status500).first(1)]);
    let head = server
        .admin_at(proxy.endpoint())
        .head_object()
        .bucket(&bucket)
        .key("job/1/other")
        .send()
        .await
        .expect("the SDK retries an InternalError");
    assert_eq!(head.content_length(), Some(1));
    assert_eq!(proxy.count("HEAD", "job/1/other"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_drops_the_connection_without_forwarding() {
    let server = moto();
    let bucket = server.new_bucket(false).await;
    let proxy = HttpFaultProxy::start(&server.endpoint);
    let id = proxy.add_rule(Rule::new("*", "/gone", Action::Reset));
    let once = no_retry_client(&server, proxy.endpoint());
    let err = once
        .put_object()
        .bucket(&bucket)
        .key("gone")
        .body(ByteStream::from(vec![1u8; 256 * 1024]))
        .send()
        .await
        .expect_err("reset");
    assert!(err.as_service_error().is_none(), "{err:?}");
    assert!(!exists(&server, &bucket, "gone").await);
    // Every attempt of a retrying client is reset too: it gives up.
    let err = server
        .admin_at(proxy.endpoint())
        .get_object()
        .bucket(&bucket)
        .key("gone")
        .send()
        .await
        .expect_err("reset every time");
    assert!(err.as_service_error().is_none(), "{err:?}");
    let stats = proxy.stats(id);
    assert_eq!(stats.seen, stats.fired);
    assert!(stats.seen >= 3, "the SDK retried: {stats:?}");
    assert!(proxy.requests().iter().all(|r| r.status.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_holds_a_request_back_then_forwards_it() {
    let server = moto();
    let bucket = server.new_bucket(false).await;
    let proxy = HttpFaultProxy::start(&server.endpoint);
    let client = server.admin_at(proxy.endpoint());
    client
        .put_object()
        .bucket(&bucket)
        .key("slow")
        .body(ByteStream::from_static(b"slow"))
        .send()
        .await
        .unwrap();
    let id = proxy.add_rule(Rule::new(
        "GET",
        "/slow",
        Action::Delay(Duration::from_millis(1500)),
    ));
    let t0 = Instant::now();
    assert_eq!(get_bytes(&client, &bucket, "slow").await, b"slow");
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(proxy.stats(id), RuleStats { seen: 1, fired: 1 });
    proxy.clear_rules();
    let t0 = Instant::now();
    get_bytes(&client, &bucket, "slow").await;
    assert!(t0.elapsed() < Duration::from_millis(1500));
    assert_eq!(proxy.stats(id), RuleStats { seen: 1, fired: 1 }, "cleared");
}

/// drkit's own S3 storage (path-style, its retry settings) through the proxy: a lost answer
/// to a small PUT and to one part of a multipart upload are retried, and the objects are
/// whole on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drkit_s3_storage_retries_lost_answers_through_the_proxy() {
    let server = moto();
    let bucket = server.new_bucket(false).await;
    let proxy = HttpFaultProxy::start(&server.endpoint);
    let storage = drkit_drivers::open_storage(
        "s3",
        &server.spec_at(
            proxy.endpoint(),
            &bucket,
            "part_size = \"5MiB\"\nupload_concurrency = 2",
        ),
    )
    .unwrap();

    let manifest = proxy.add_rule(Rule::new("PUT", "/manifest.json", Action::CutResponse).nth(1));
    storage
        .put("app/1/manifest.json", b"{\"v\": 1}".to_vec())
        .await
        .expect("drkit retries the PUT whose answer was lost");
    assert_eq!(proxy.stats(manifest), RuleStats { seen: 2, fired: 1 });
    assert_eq!(
        get_bytes(&server.admin(), &bucket, "app/1/manifest.json").await,
        b"{\"v\": 1}"
    );

    let part = proxy.add_rule(Rule::new("PUT", "partNumber=2", Action::CutResponse).nth(1));
    let err500 = proxy.add_rule(Rule::new("PUT", "partNumber=3", Action::Status500).nth(1));
    let data = Pattern::bytes(11, 12 * MIB + 5);
    let mut up = storage.create("app/1/data.bin").await.unwrap();
    up.write_all(&data).await.unwrap();
    up.flush().await.unwrap();
    let meta = up
        .commit()
        .await
        .expect("the upload heals a lost part answer and a 500");
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(proxy.stats(part), RuleStats { seen: 2, fired: 1 });
    assert_eq!(proxy.stats(err500), RuleStats { seen: 2, fired: 1 });

    let mut back = Vec::new();
    storage
        .get("app/1/data.bin")
        .await
        .unwrap()
        .read_to_end(&mut back)
        .await
        .unwrap();
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
}

/// Read one HTTP answer with a `Content-Length` from `sock`: (head, body).
async fn read_answer(sock: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            sock.read(&mut byte).await.unwrap(),
            1,
            "closed mid-head: {buf:?}"
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    sock.read_exact(&mut body).await.unwrap();
    (head, body)
}

/// Raw HTTP/1.1 on one socket: an injected 500 (after its body, sent with a
/// `Content-Length`, then a chunked body) leaves the connection usable, and the next
/// requests reach the server (whose answer to unsigned requests is not the proxy's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_goes_on_after_a_500_for_length_and_chunked_bodies() {
    let server = s3s();
    let proxy = HttpFaultProxy::start(&server.endpoint);
    let id = proxy.add_rule(Rule::new("PUT", "/b/fail", Action::Status500));
    let addr = proxy.endpoint().trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let host = format!("Host: {addr}\r\n");
    sock.write_all(
        format!("PUT /b/fail HTTP/1.1\r\n{host}Content-Length: 5\r\n\r\nhello").as_bytes(),
    )
    .await
    .unwrap();
    let (head, body) = read_answer(&mut sock).await;
    assert!(head.starts_with("HTTP/1.1 500"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("<Code>InternalError</Code>"));
    sock.write_all(
        format!(
            "PUT /b/fail HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (head, _) = read_answer(&mut sock).await;
    assert!(head.starts_with("HTTP/1.1 500"), "{head}");
    sock.write_all(format!("GET /b/other HTTP/1.1\r\n{host}\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_answer(&mut sock).await;
    assert!(
        !head.contains("DRKITFAULTPROXY"),
        "forwarded to the server: {head}"
    );
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.stats(id), RuleStats { seen: 2, fired: 2 });
    let requests = proxy.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests[2].status.is_some_and(|s| s != 500 && s >= 400),
        "{requests:#?}"
    );
}
