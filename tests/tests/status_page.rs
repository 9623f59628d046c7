//! The status page in a real browser: headless Chromium from Debian, driven
//! over WebDriver by chromedriver. Log in with the token, see a block made
//! through the API appear with its remaining time, press its unblock
//! button, see it gone from the page and from the engine.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use mtguard::admin;
use mtguard_core::Policy;
use mtguard_tests::{
    connect_from, free_port, http_request, served, served_from, test_guard, AdminInProcess,
    EchoBackend, Relay,
};
use serde_json::{json, Value};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// The whole browser part; a hung browser fails the test instead of
/// hanging the suite.
const BROWSER_LIMIT: Duration = Duration::from_secs(120);

/// How long the page may take to show a change: it polls every 2 s.
const PAGE_LIMIT: Duration = Duration::from_secs(20);

/// chromedriver and the Chromium it starts, in a process group of their
/// own so both are killed when the test ends, however it ends.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(log: &Path) -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver runs (test.sh installs chromium-driver)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid: this reaches the browser
        // it started and nothing else.
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) takes no pointers; the group is the one this
        // test created.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn chrome_capabilities(profile: &Path) -> serde_json::Map<String, Value> {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            // No network here: without these Chromium keeps dialling out
            // and its connections are refused many at a time.
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1250",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    caps.as_object().unwrap().clone()
}

fn api(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    http_request(addr, method, path, Some(TOKEN), body).unwrap()
}

/// The clients `GET /v1/blocks` lists.
fn listed_blocks(addr: SocketAddr) -> Vec<String> {
    let (status, body) = api(addr, "GET", "/v1/blocks", None);
    assert_eq!(status, 200, "{body}");
    let blocks: Value = serde_json::from_str(&body).unwrap();
    blocks
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["client"].as_str().unwrap().to_owned())
        .collect()
}

/// The head of the answer to `GET path`, header names in lower case.
fn response_head(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    raw.split_once("\r\n\r\n").unwrap().0.to_owned()
}

async fn wait_gone(browser: &Client, css: &str) {
    let start = Instant::now();
    loop {
        if browser
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .is_empty()
        {
            return;
        }
        assert!(start.elapsed() < PAGE_LIMIT, "{css} still on the page");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn log_in_see_a_block_and_lift_it_from_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let guard = test_guard(Policy::default());
    let backend = EchoBackend::start();
    let relay = Relay::start(guard.clone(), backend.addr, None);

    let admin = AdminInProcess::start(mtguard::node::Handles::new(guard.clone()), TOKEN, None);
    let (addr, runtime) = (admin.addr, &admin.runtime);

    // The page is served without the token, under a policy that allows
    // only its own script and style; the data stays behind the token.
    let (status, page) = http_request(addr, "GET", "/", None, None).unwrap();
    assert_eq!(status, 200);
    assert!(page.contains(r#"<script src="/status.js""#));
    assert!(!page.contains("<script>"), "no inline script");
    let head = response_head(addr, "/");
    assert!(
        head.contains(&format!(
            "content-security-policy: {}\r\n",
            admin::CONTENT_SECURITY_POLICY
        )),
        "{head}"
    );
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(response_head(addr, "/status.js").contains("content-type: text/javascript"));
    assert_eq!(
        http_request(addr, "GET", "/v1/status", None, None)
            .unwrap()
            .0,
        401
    );

    // Something to show: two open connections and refused ones.
    // (Each sends a line first: a silent connection is closed as slowloris.)
    let open: Vec<_> = (2..4u8)
        .map(|i| {
            let mut c = connect_from(IpAddr::from([127, 0, 0, i]), relay.listen).unwrap();
            assert!(served(&mut c));
            c
        })
        .collect();
    relay.wait_until("two connections", |e| e.active_connections() == 2);

    let driver = Driver::start(&dir.path().join("chromedriver.log"));
    let profile = dir.path().join("profile");
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let blocked = "127.0.0.7";
    let other = "203.0.113.50";
    runtime.block_on(async {
        let browser = tokio::time::timeout(
            BROWSER_LIMIT,
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(chrome_capabilities(&profile))
                .connect(&format!("http://127.0.0.1:{}", driver.port)),
        )
        .await
        .expect("Chromium started in time")
        .expect("a WebDriver session");
        let steps = async {
            browser.goto(&format!("http://{addr}/")).await.unwrap();
            // The style sheet applied under the policy (the script's
            // running shows in everything below).
            let radius = browser
                .execute(
                    "return getComputedStyle(document.getElementById('login-form')).borderTopLeftRadius",
                    vec![],
                )
                .await
                .unwrap();
            assert_eq!(radius, json!("6px"), "status.css was not applied");
            // A wrong token is refused and the login asked for again.
            let field = browser
                .wait()
                .at_most(PAGE_LIMIT)
                .for_element(Locator::Css("#token"))
                .await
                .unwrap();
            field.send_keys("not-the-token").await.unwrap();
            browser
                .find(Locator::Css("#login"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            let error = browser
                .wait()
                .at_most(PAGE_LIMIT)
                .for_element(Locator::XPath(
                    "//p[@id='login-error'][contains(., 'refused')]",
                ))
                .await
                .unwrap();
            assert!(error.text().await.unwrap().contains("token was refused"));

            let field = browser.find(Locator::Css("#token")).await.unwrap();
            field.send_keys(TOKEN).await.unwrap();
            browser
                .find(Locator::Css("#login"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            browser
                .wait()
                .at_most(PAGE_LIMIT)
                .for_element(Locator::XPath("//p[@id='active-connections'][. = '2']"))
                .await
                .expect("the page shows the two open connections");

            // Blocks made through the API appear with their remaining time.
            let (status, body) = tokio::task::spawn_blocking(move || {
                api(
                    addr,
                    "POST",
                    "/v1/blocks",
                    Some(&format!(r#"{{"ip": "{blocked}", "duration": "10m"}}"#)),
                );
                api(
                    addr,
                    "POST",
                    "/v1/blocks",
                    Some(&format!(r#"{{"ip": "{other}", "duration": "1h"}}"#)),
                )
            })
            .await
            .unwrap();
            assert_eq!(status, 201, "{body}");
            let row = format!(r#"#blocks tr[data-client="{blocked}"]"#);
            let found = browser
                .wait()
                .at_most(PAGE_LIMIT)
                .for_element(Locator::Css(&row))
                .await
                .expect("the block appears");
            let text = found.text().await.unwrap();
            assert!(text.contains("manual") && text.contains("9m"), "{text}");
            browser
                .wait()
                .at_most(PAGE_LIMIT)
                .for_element(Locator::Css(&format!(
                    r#"#blocks tr[data-client="{other}"]"#
                )))
                .await
                .unwrap();

            // Refused connections from the blocked client show by reason,
            // in bursts a poll apart so the chart has bars to draw.
            tokio::task::spawn_blocking(move || {
                for burst in [3, 5, 4] {
                    for _ in 0..burst {
                        assert!(!served_from(blocked.parse().unwrap(), relay.listen));
                    }
                    std::thread::sleep(Duration::from_millis(2100));
                }
            })
            .await
            .unwrap();
            browser
                .wait()
                .at_most(PAGE_LIMIT)
                .for_element(Locator::XPath(
                    "//table[@id='refusals']//tr[td[contains(., 'blocked')]]/td[4][. = '12']",
                ))
                .await
                .expect("the page counts the refusals");
            // Let the chart gather a few polls for the picture.
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert_eq!(
                browser
                    .find(Locator::Css("#active-connections"))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
                "2",
                "the open connections are still shown"
            );
            let png = browser.screenshot().await.unwrap();
            assert!(png.starts_with(b"\x89PNG"));
            std::fs::write(&shot, png).unwrap();

            // Unblock from the page: gone there and in the engine.
            browser
                .find(Locator::Css(&format!(
                    r#"button.unblock[data-client="{blocked}"]"#
                )))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            wait_gone(&browser, &row).await;
            let listed = tokio::task::spawn_blocking(move || listed_blocks(addr))
                .await
                .unwrap();
            assert_eq!(listed, vec![other.to_owned()]);
            assert!(!guard.with(|e, _| e.is_blocked(blocked.parse().unwrap())));
            // The other block stays on the page.
            browser
                .find(Locator::Css(&format!(
                    r#"#blocks tr[data-client="{other}"]"#
                )))
                .await
                .expect("the other block is still listed");
        };
        let outcome = tokio::time::timeout(BROWSER_LIMIT, steps).await;
        let _ = browser.close().await;
        outcome.expect("the browser steps finished in time");
    });
    drop(driver);
    drop(open);
    eprintln!("screenshot: {}", shot.display());
}
