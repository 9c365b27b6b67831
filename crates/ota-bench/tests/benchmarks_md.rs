//! BENCHMARKS.md's deterministic part, the modelled times of the 1 MiB image, is what the
//! model gives today: a change that moves a figure fails here until `cargo xtask bench` is run
//! again.

use ble_link_model::Profile;
use ota_bench::model::run_profile;
use ota_bench::report::part1_row;

#[test]
fn benchmarks_md_part_1_is_what_the_model_gives() {
    let md = include_str!("../../../BENCHMARKS.md");
    let image = ota_bench::device::part1_image();
    for profile in Profile::ALL {
        let row = part1_row(&run_profile(profile, &image));
        assert!(
            md.contains(&row),
            "BENCHMARKS.md is stale for {}: run `cargo xtask bench`. The model gives:\n{row}",
            profile.name()
        );
    }
}
