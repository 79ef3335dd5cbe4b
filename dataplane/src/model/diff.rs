//! The installed-vs-desired diff: what to remove and what to (re)install so that the
//! installed entries become the desired ones. Pure and generic, so routes,
//! neighbour entries and FDB entries all converge the same way.

use std::collections::BTreeMap;

/// The changes that turn `installed` into `desired`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Diff<K, V> {
    /// Keys installed but not desired, or desired with another value
    /// (removed first, then installed again from `install`).
    pub(crate) remove: Vec<(K, V)>,
    /// Entries desired but missing or different.
    pub(crate) install: Vec<(K, V)>,
}

#[cfg(test)]
impl<K, V> Diff<K, V> {
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.install.is_empty()
    }
}

/// Compare `installed` with `desired`. An entry whose value differs is both
/// removed (old value) and installed (new value): replace semantics that
/// also work for kernel objects without an atomic replace.
pub(crate) fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    installed: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> Diff<K, V> {
    let mut remove = Vec::new();
    let mut install = Vec::new();
    for (k, v) in installed {
        match desired.get(k) {
            Some(want) if want == v => {}
            Some(_) | None => remove.push((k.clone(), v.clone())),
        }
    }
    for (k, v) in desired {
        if installed.get(k) != Some(v) {
            install.push((k.clone(), v.clone()));
        }
    }
    Diff { remove, install }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(u8, &'static str)]) -> BTreeMap<u8, &'static str> {
        entries.iter().cloned().collect()
    }

    #[test]
    fn diff_table() {
        // (installed, desired, remove, install)
        type Case =
            (Vec<(u8, &'static str)>, Vec<(u8, &'static str)>, Vec<(u8, &'static str)>, Vec<(u8, &'static str)>);
        let cases: Vec<Case> = vec![
            (vec![], vec![], vec![], vec![]),
            (vec![], vec![(1, "a")], vec![], vec![(1, "a")]),
            (vec![(1, "a")], vec![], vec![(1, "a")], vec![]),
            (vec![(1, "a")], vec![(1, "a")], vec![], vec![]),
            (vec![(1, "a")], vec![(1, "b")], vec![(1, "a")], vec![(1, "b")]),
            (
                vec![(1, "a"), (2, "b"), (3, "c")],
                vec![(2, "b"), (3, "x"), (4, "d")],
                vec![(1, "a"), (3, "c")],
                vec![(3, "x"), (4, "d")],
            ),
        ];
        for (installed, desired, remove, install) in cases {
            let d = diff(&map(&installed), &map(&desired));
            assert_eq!(d.remove, remove, "installed {installed:?} desired {desired:?}");
            assert_eq!(d.install, install, "installed {installed:?} desired {desired:?}");
        }
    }

    #[test]
    fn applying_the_diff_converges_and_is_idempotent() {
        let installed = map(&[(1, "a"), (2, "b"), (5, "z")]);
        let desired = map(&[(2, "c"), (3, "d")]);
        let d = diff(&installed, &desired);
        let mut state = installed.clone();
        for (k, _) in &d.remove {
            state.remove(k);
        }
        for (k, v) in &d.install {
            state.insert(*k, *v);
        }
        assert_eq!(state, desired);
        assert!(diff(&state, &desired).is_empty());
    }
}
