//! The web UI in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`). Signs in with a token, starts a run from the form typed
//! from the pipeline's params, watches its DAG change colour without a reload, cancels a
//! run, checks every page for script errors, and saves a screenshot of a run page under
//! `target/screenshots/` for people to look at.
//!
//! Without chromedriver the test is skipped with a printed reason, unless
//! `SLUICE_REQUIRE_BROWSER=1` (CI sets it), where it fails.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use sluice_tests::cluster::Server;
use sluice_tests::redis::free_port;
use sluice_tests::{workspace_root, Scratch};

const TOKEN: &str = "browser-test-token";
const WAIT: Duration = Duration::from_secs(60);

/// A step that runs until the test creates `release`, and one that follows it.
const GATED: &str = "name: gated
params:
  rounds: {type: integer, default: 2, description: how many rounds}
  label: first
steps:
  hold:
    run: i=0; while [ ! -e ../release ]; do i=$((i+1)); echo \"tick $i\"; sleep 0.1; done; echo \"rounds=$PARAM_ROUNDS label=$PARAM_LABEL\"; mkdir \"$SLUICE_OUT/report\"; echo one > \"$SLUICE_OUT/report/a.txt\"; echo two > \"$SLUICE_OUT/report/b.txt\"
    outputs: [report/]
  after:
    depends: [hold]
    run: echo done
";

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver on a free port; `None` (after saying why) when it is not installed.
fn start_driver() -> Option<Driver> {
    let found = sluice_tests::tool_available(
        "chromedriver",
        "SLUICE_REQUIRE_BROWSER",
        "apt-get install chromium chromium-driver",
        "",
    );
    if !found {
        return None;
    }
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let until = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver { child, port })
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,1000"]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a browser session")
}

/// Clicks the first element `css` finds.
async fn click(client: &Client, css: &str) {
    let element = client.find(Locator::Css(css)).await.expect(css);
    element.click().await.expect("a click");
}

/// Polls a script until it returns `true`.
async fn wait_for(client: &Client, what: &str, script: &str) {
    let until = Instant::now() + WAIT;
    loop {
        let value = client.execute(script, vec![]).await.expect("script runs");
        if value == serde_json::Value::Bool(true) {
            return;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// No script error, unhandled rejection or `console.error` on the page, and its stylesheet
/// applied (a page whose CSS failed to load would still "work").
async fn no_script_errors(client: &Client, page: &str) {
    let styled = client
        .execute(
            "return getComputedStyle(document.body).margin === '0px' && document.styleSheets.length === 1;",
            vec![],
        )
        .await
        .expect("script runs");
    assert_eq!(
        styled,
        serde_json::Value::Bool(true),
        "the stylesheet of {page} did not apply"
    );
    let errors = client
        .execute(
            "return window.sluiceErrors || ['app.js did not load'];",
            vec![],
        )
        .await
        .expect("script runs");
    assert_eq!(errors, serde_json::json!([]), "script errors on {page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_starts_a_run_watches_it_live_and_cancels_another() {
    let Some(driver) = start_driver() else { return };
    let s = Scratch::new();
    s.write("pipelines/gated.yaml", GATED);
    let server = Server::start(&s, &[("SLUICE_API_TOKEN", TOKEN)]);
    let base = server.url();
    let client = browser(&driver).await;

    // Signed out: the sign-in page, then back where we were going.
    client
        .goto(&format!("{base}/ui/pipelines/gated"))
        .await
        .unwrap();
    assert!(client
        .current_url()
        .await
        .unwrap()
        .path()
        .starts_with("/ui/login"));
    client
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(&client, "form button[type=submit]").await;
    wait_for(
        &client,
        "the pipeline page",
        "return location.pathname === '/ui/pipelines/gated';",
    )
    .await;
    no_script_errors(&client, "the pipeline page").await;

    // The form is typed from the params; a run starts with what was typed.
    let rounds = client
        .find(Locator::Css("input[name='p.rounds']"))
        .await
        .unwrap();
    assert_eq!(
        rounds.attr("type").await.unwrap().as_deref(),
        Some("number")
    );
    rounds.clear().await.unwrap();
    rounds.send_keys("5").await.unwrap();
    click(&client, "form.panel button[type=submit]").await;
    wait_for(
        &client,
        "the run page",
        "return location.pathname.startsWith('/ui/runs/');",
    )
    .await;
    let run_page = client.current_url().await.unwrap();
    // Marked, so a reload would show: the colour must change under this same page.
    client
        .execute("window.stillHere = true; return true;", vec![])
        .await
        .unwrap();
    wait_for(
        &client,
        "the running step's box to turn running",
        "return document.querySelector('[data-node=\"s-0\"]').getAttribute('class') === 'node st-running' && window.stillHere === true;",
    )
    .await;
    no_script_errors(&client, "a running run's page").await;
    let screenshots = workspace_root().join("target").join("screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    std::fs::write(
        screenshots.join("run-running.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();

    // The selected step's log tail grows under the same page.
    client
        .goto(&format!("{}?step=hold", run_page.as_str()))
        .await
        .unwrap();
    client
        .execute("window.stillHere = true; window.ticksAtLoad = document.getElementById('stdout-tail').textContent.split('tick').length; return true;", vec![])
        .await
        .unwrap();
    wait_for(
        &client,
        "more log lines without a reload",
        "return window.stillHere === true && document.getElementById('stdout-tail').textContent.split('tick').length > window.ticksAtLoad + 3;",
    )
    .await;

    std::fs::write(s.path().join("release"), "").unwrap();
    // When the run ends the page reloads with the details: both steps succeeded.
    wait_for(
        &client,
        "the run to succeed",
        "return document.querySelector('[data-run-status]') && document.querySelector('[data-run-status]').textContent === 'succeeded';",
    )
    .await;
    client
        .goto(&format!("{}?step=hold", run_page.as_str()))
        .await
        .unwrap();
    let log = client
        .find(Locator::Css("pre.log"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.contains("rounds=5 label=first"), "{log}");
    std::fs::write(
        screenshots.join("run-succeeded.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();
    no_script_errors(&client, "a finished run's page").await;
    // The step's folder artifact lists its files, each a download.
    click(&client, "a[href$='/files']").await;
    wait_for(
        &client,
        "the artifact's files",
        "return document.body.textContent.includes('a.txt') && document.body.textContent.includes('b.txt');",
    )
    .await;
    no_script_errors(&client, "an artifact's files").await;

    // Another run (the release file is gone), cancelled from its page.
    std::fs::remove_file(s.path().join("release")).unwrap();
    client
        .goto(&format!("{base}/ui/pipelines/gated"))
        .await
        .unwrap();
    click(&client, "form.panel button[type=submit]").await;
    wait_for(
        &client,
        "the second run's page",
        "return !!document.querySelector('button.danger');",
    )
    .await;
    click(&client, "button.danger").await;
    wait_for(
        &client,
        "the run to end cancelled",
        "return document.querySelector('[data-run-status]') && document.querySelector('[data-run-status]').textContent === 'cancelled';",
    )
    .await;

    for page in ["/ui/runs", "/ui/pipelines", "/ui/workers", "/ui/models"] {
        client.goto(&format!("{base}{page}")).await.unwrap();
        no_script_errors(&client, page).await;
        let heading = client
            .find(Locator::Css("h1"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!heading.is_empty(), "{page} has a heading");
    }
    client.close().await.unwrap();
}
