//! The endpoints file: invalid lines are skipped, changes are seen at once (in-place writes
//! and atomic renames alike), and a file that breaks later leaves the last good set serving.

mod common;

use std::time::Duration;

use common::{Mpp, Prometheus, get, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_broken_file_serves_from_its_valid_lines() {
    let (a, b) = (Prometheus::start().await, Prometheus::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints");
    let text = format!(
        "# production replicas\n{}\n\nnot a url at all\nftp://127.0.0.1:21\n  {}/  # trailing slash and comment\nhttp://127.0.0.1:99999\n",
        a.url(),
        b.url()
    );
    std::fs::write(&file, text).unwrap();
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--routing-strategy", "random"]).await;

    mpp.wait_selected(&[&a.url(), &b.url()]).await;
    let status = mpp.status().await;
    assert_eq!(status["candidates"].as_array().unwrap().len(), 2, "{status}");
    assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_seen_at_once_whether_written_in_place_or_renamed_over() {
    let (a, b, c) = (Prometheus::start().await, Prometheus::start().await, Prometheus::start().await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints");
    std::fs::write(&file, a.url()).unwrap();
    // An hour between rounds: only the change notification can explain a quick update.
    let mpp = Mpp::start(&[
        "--endpoints-file",
        file.to_str().unwrap(),
        "--routing-strategy",
        "random",
        "--selection-interval",
        "1h",
    ])
    .await;
    mpp.wait_selected(&[&a.url()]).await;

    std::fs::write(&file, format!("{}\n{}\n", a.url(), b.url())).unwrap();
    mpp.wait_selected(&[&a.url(), &b.url()]).await;

    let staged = dir.path().join("endpoints.new");
    std::fs::write(&staged, format!("{}\n", c.url())).unwrap();
    std::fs::rename(&staged, &file).unwrap();
    mpp.wait_selected(&[&c.url()]).await;
    assert_eq!(get(&mpp.url("/api/v1/query?query=up")).await.unwrap().served_by(), Some(c.url()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_emptied_file_keeps_the_last_good_set_serving() {
    let a = Prometheus::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints");
    std::fs::write(&file, format!("{}\n", a.url())).unwrap();
    let mpp = Mpp::start(&["--endpoints-file", file.to_str().unwrap(), "--selection-interval", "200ms"]).await;
    mpp.wait_selected(&[&a.url()]).await;

    for break_it in [
        |p: &std::path::Path| std::fs::write(p, "# nothing here\n").unwrap(),
        |p: &std::path::Path| std::fs::remove_file(p).unwrap(),
    ] {
        break_it(&file);
        wait_until("the status to report the discovery error", Duration::from_secs(10), || async {
            mpp.status().await["discovery_error"].is_string()
        })
        .await;
        let status = mpp.status().await;
        assert!(status["discovery_error"].as_str().unwrap().contains(file.to_str().unwrap()), "{status}");
        assert_eq!(mpp.selected().await, vec![a.url()]);
        let answer = get(&mpp.url("/api/v1/query?query=up")).await.unwrap();
        assert_eq!((answer.status.as_u16(), answer.served_by()), (200, Some(a.url())));
        let page = get(&mpp.url("/mpp/status")).await.unwrap().text();
        assert!(page.contains("Discovery failed"), "the page must show the discovery error");
    }

    std::fs::write(&file, format!("{}\n", a.url())).unwrap();
    wait_until("the discovery error to clear", Duration::from_secs(10), || async {
        mpp.status().await["discovery_error"].is_null()
    })
    .await;
}
