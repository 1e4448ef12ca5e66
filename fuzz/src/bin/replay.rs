//! Replays every corpus file of every target through the same function
//! libFuzzer calls, natively and on stable Rust, and times each input.
//!
//! Usage: `replay [--dir DIR] [--top N] [TARGET...]`
//! - `DIR` holds one folder per target (default: the crate's `corpus/`);
//!   with `--dir`, targets without a folder are skipped, otherwise every
//!   target must have a non-empty corpus;
//! - prints, per target, the inputs run, the total time and the `N`
//!   slowest inputs (default 1); exits 1 if any input panicked.

use std::panic;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use upsync_wasm_fuzz::TARGETS;

struct Args {
    dir: Option<PathBuf>,
    top: usize,
    only: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { dir: None, top: 1, only: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => args.dir = Some(it.next().ok_or("--dir needs a folder")?.into()),
            "--top" => args.top = it.next().and_then(|n| n.parse().ok()).ok_or("--top needs a number")?,
            "-h" | "--help" => return Err("usage: replay [--dir DIR] [--top N] [TARGET...]".into()),
            name => {
                if !TARGETS.iter().any(|(t, _)| *t == name) {
                    return Err(format!("unknown target {name:?}"));
                }
                args.only.push(name.to_string());
            }
        }
    }
    Ok(args)
}

fn files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let strict = args.dir.is_none();
    let root = args.dir.clone().unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let (mut passed, mut failed, mut problems) = (0usize, 0usize, Vec::new());
    println!("{:<15} {:>6} {:>12}  slowest", "target", "inputs", "total");
    for (name, run) in TARGETS {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        let dir = root.join(name);
        if !dir.is_dir() && !strict {
            continue;
        }
        let inputs = match files(&dir) {
            Ok(f) if !f.is_empty() => f,
            Ok(_) => {
                problems.push(format!("{name}: empty corpus {}", dir.display()));
                continue;
            }
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut times: Vec<(Duration, &PathBuf)> = Vec::with_capacity(inputs.len());
        let mut total = Duration::ZERO;
        for path in &inputs {
            let data = match std::fs::read(path) {
                Ok(d) => d,
                Err(e) => {
                    problems.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            let start = Instant::now();
            let outcome = panic::catch_unwind(|| run(&data));
            let took = start.elapsed();
            total += took;
            times.push((took, path));
            match outcome {
                Ok(()) => passed += 1,
                Err(_) => {
                    failed += 1;
                    problems.push(format!("{name}: {} panicked (message above)", path.display()));
                }
            }
        }
        times.sort_by_key(|t| std::cmp::Reverse(t.0));
        let slowest: Vec<String> = times
            .iter()
            .take(args.top)
            .map(|(t, p)| format!("{} {}", ms(*t), p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()))
            .collect();
        println!("{name:<15} {:>6} {:>12}  {}", inputs.len(), ms(total), slowest.join("; "));
    }
    for p in &problems {
        eprintln!("FAILED {p}");
    }
    println!("replay: {passed} passed, {failed} failed");
    if !problems.is_empty() {
        std::process::exit(1);
    }
}
