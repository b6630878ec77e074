//! The built XDP object exports every map and the program userspace names
//! (`#[map(name = ...)]` takes a literal, so only this test ties them).

use gateway_common::{PROGRAM_NAME, map_names};

#[test]
fn object_exports_every_map_and_the_program() {
    let obj = aya_obj::Object::parse(gateway::xdp::OBJECT).expect("the embedded object parses");
    for name in map_names::ALL {
        assert!(
            obj.maps.contains_key(name),
            "map {name} missing; object has {:?}",
            obj.maps.keys()
        );
    }
    assert!(
        obj.programs.contains_key(PROGRAM_NAME),
        "program {PROGRAM_NAME} missing; object has {:?}",
        obj.programs.keys()
    );
}
