//! Every input that once crashed a fuzz target (`regressions/<target>/`), replayed; and each
//! target's seeds, which must pass.

#[test]
fn every_kept_crash_input_passes_now() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    for target in ota_fuzz::TARGETS {
        let Ok(dir) = std::fs::read_dir(root.join(target.name)) else {
            continue;
        };
        for entry in dir {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            eprintln!("replaying {}", path.display());
            (target.body)(&input);
        }
    }
}

#[test]
fn every_seed_passes_and_a_short_run_finds_nothing() {
    for target in ota_fuzz::TARGETS {
        for seed in (target.seeds)() {
            (target.body)(&seed);
        }
    }
    let all: Vec<_> = ota_fuzz::TARGETS.iter().collect();
    let stats = ota_fuzz::run(&all, 7, std::time::Duration::from_millis(200));
    assert!(stats.crashes.is_empty(), "{:?}", stats.crashes);
    assert!(stats.executions.iter().all(|(_, n)| *n > 0));
}
