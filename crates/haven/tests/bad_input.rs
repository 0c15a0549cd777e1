//! Bad input: one clear line on stderr, a non-zero exit, nothing changed.

mod support;

use support::*;

fn one_line_error(o: &std::process::Output, needle: &str) {
    assert!(
        !o.status.success(),
        "expected failure, got success: {}",
        stdout(o)
    );
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(needle), "expected {needle:?} in {err}");
}

#[test]
fn bad_input_is_refused_with_one_clear_line() {
    let lab = Lab::up();
    lab.ok(&["volume", "create", "keep", "--size", "8MiB"]);

    one_line_error(
        &lab.cli(&["volume", "show", "nosuch"]),
        "no volume named nosuch",
    );
    one_line_error(
        &lab.cli(&["volume", "delete", "nosuch"]),
        "no volume named nosuch",
    );
    one_line_error(
        &lab.cli(&["volume", "create", "v2", "--size", "12XB"]),
        "invalid size \"12XB\"",
    );
    one_line_error(
        &lab.cli(&["volume", "create", "keep", "--size", "8MiB"]),
        "already exists",
    );
    one_line_error(
        &lab.cli(&["volume", "create", "Bad_Name", "--size", "8MiB"]),
        "invalid volume name",
    );
    one_line_error(
        &lab.cli(&["volume", "resize", "keep", "--size", "4MiB"]),
        "shrinking is not supported",
    );

    // A port already in use: a new lab whose group portal is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let other = lab.tmp.path().join("other");
    let o = haven(
        &[
            "lab",
            "up",
            "--detach",
            "--data",
            other.to_str().unwrap(),
            "--portal",
            &addr,
        ],
        &[],
    );
    one_line_error(&o, "in use");
    assert!(
        !other.join("lab.toml").exists(),
        "a failed lab up left state behind"
    );

    // A standalone member whose portal is in use.
    let o = haven(
        &[
            "member",
            "run",
            "--data",
            lab.tmp.path().join("m").to_str().unwrap(),
            "--portal",
            &addr,
            "--listen-api",
            "127.0.0.1:0",
        ],
        &[],
    );
    one_line_error(&o, "in use");

    // A data dir that is a file.
    let file = lab.tmp.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    let o = haven(
        &["lab", "up", "--detach", "--data", file.to_str().unwrap()],
        &[],
    );
    one_line_error(&o, "is not a directory");
    let o = haven(
        &[
            "member",
            "run",
            "--data",
            file.to_str().unwrap(),
            "--portal",
            "127.0.0.1:0",
            "--listen-api",
            "127.0.0.1:0",
        ],
        &[],
    );
    one_line_error(&o, "not a directory");

    // Nothing changed: the one volume is still there, with its size.
    let v: serde_json::Value =
        serde_json::from_str(&lab.ok(&["volume", "show", "keep", "--json"])).unwrap();
    assert_eq!(v["size"], 8 << 20);
    let list: serde_json::Value =
        serde_json::from_str(&lab.ok(&["volume", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
}
