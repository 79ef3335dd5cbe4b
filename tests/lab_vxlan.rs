//! The vxlan backend on a 3-node lab.

mod lab_common;

use lab_common::*;

#[test]
fn vxlan_pods_reach_each_other() {
    let lab = lab(3, "vxlan", &[]);
    assert_ping_matrix(&lab);
    weft_lab::lab::tcp_transfer_checked(&lab, 1, 3, 8 << 20).unwrap();
}
