//! A step is untrusted code, tried end to end: what it does to its own folder must not make
//! the daemon serve host files or its own environment.

use sluice_tests::cluster::{http, run_id_of, Server};
use sluice_tests::{sluice_bin, text, Scratch};

#[test]
fn a_log_swapped_for_a_link_to_the_servers_environment_is_not_served() {
    let scratch = Scratch::new();
    scratch.write(
        "pipelines/swap.yaml",
        "name: swap\nsteps:\n  sneaky:\n    run: echo visible; ln -sf /proc/self/environ \"$SLUICE_OUT/../../stdout.log\"; echo hidden\n",
    );
    let planted = format!("server-only-{}", std::process::id());
    let server = Server::start(&scratch, &[("SLUICE_TEST_PLANTED", &planted)]);
    let out = std::process::Command::new(sluice_bin())
        .args(["trigger", "swap", "--wait", "--server", &server.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_id = run_id_of(&text(&out.stdout));
    let url = format!("{}/api/v1/runs/{run_id}/steps/sneaky/logs", server.url());
    let (status, body) = http("GET", &url, None, None);
    assert!(
        !body.contains(&planted),
        "served the server's environment: {body}"
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("symbolic link"), "{body}");
    let (status, body) = http("GET", &format!("{url}?follow=true"), None, None);
    assert!(!body.contains(&planted), "followed: {status} {body}");
    // The store is the server's while it runs: read it directly once the server is gone.
    drop(server);
    let logs = scratch.run(&["logs", &run_id, "sneaky"]);
    assert!(!text(&logs.stdout).contains(&planted));
    assert!(
        text(&logs.stderr).contains("symbolic link"),
        "{}",
        text(&logs.stderr)
    );
}
