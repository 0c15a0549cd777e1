//! What changed while a replica was away, so that it resyncs only that.
//!
//! The primary of a placement group keeps a [`DirtyMap`] per absent replica: every write or
//! unmap it applies without that replica marks the granules (1 MiB by default) it touched.
//! When the replica is back it asks for the regions, copies them, and the primary clears
//! each region once copied; writes that land during the resync mark again and are copied in
//! a later pass. Granules are kept as sorted, merged ranges per (volume, placement group):
//! a long sequential burst costs one range, not one bit per megabyte.

use crate::error::PlacementError;
use crate::map::PgId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The default tracking granule: 1 MiB.
pub const DEFAULT_GRANULE_BYTES: u64 = 1 << 20;

/// A dirty byte range of a volume in one placement group, granule-aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DirtyRegion {
    pub volume: u64,
    pub pg: PgId,
    pub offset: u64,
    pub len: u64,
}

/// Dirty granules per (volume, placement group), as disjoint, non-adjacent ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DirtyMapRecord", into = "DirtyMapRecord")]
pub struct DirtyMap {
    granule_bytes: u64,
    /// (volume, pg) → granule range start → range end (exclusive).
    ranges: BTreeMap<(u64, PgId), BTreeMap<u64, u64>>,
}

impl Default for DirtyMap {
    fn default() -> Self {
        DirtyMap {
            granule_bytes: DEFAULT_GRANULE_BYTES,
            ranges: BTreeMap::new(),
        }
    }
}

impl DirtyMap {
    pub fn new(granule_bytes: u64) -> Result<Self, PlacementError> {
        if granule_bytes == 0 {
            return Err(PlacementError::ZeroGranule);
        }
        Ok(DirtyMap {
            granule_bytes,
            ranges: BTreeMap::new(),
        })
    }

    pub fn granule_bytes(&self) -> u64 {
        self.granule_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Granules marked, over all volumes and groups.
    pub fn granules(&self) -> u64 {
        self.ranges
            .values()
            .flat_map(|set| set.iter().map(|(s, e)| e - s))
            .sum()
    }

    /// Mark `len` bytes from `offset`: every granule they touch becomes dirty.
    pub fn mark(&mut self, volume: u64, pg: PgId, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let g = self.granule_bytes;
        let first = offset / g;
        let end = offset.saturating_add(len).div_ceil(g);
        insert_range(self.ranges.entry((volume, pg)).or_default(), first, end);
    }

    /// Whether the granule holding byte `offset` is dirty.
    pub fn is_dirty(&self, volume: u64, pg: PgId, offset: u64) -> bool {
        let granule = offset / self.granule_bytes;
        self.ranges.get(&(volume, pg)).is_some_and(|set| {
            set.range(..=granule)
                .next_back()
                .is_some_and(|(_, &end)| granule < end)
        })
    }

    /// Clear the granules wholly inside `len` bytes from `offset` (a region returned by
    /// [`regions`](Self::regions) is cleared exactly). Partly covered granules stay dirty:
    /// clearing too little costs a copy, clearing too much loses data.
    pub fn clear(&mut self, volume: u64, pg: PgId, offset: u64, len: u64) {
        let g = self.granule_bytes;
        let first = offset.div_ceil(g);
        let end = match offset.checked_add(len) {
            Some(end) if end < u64::MAX => end / g,
            // A range reaching the last byte covers the last (partial) granule too.
            _ => u64::MAX.div_ceil(g),
        };
        if first >= end {
            return;
        }
        if let Some(set) = self.ranges.get_mut(&(volume, pg)) {
            remove_range(set, first, end);
            if set.is_empty() {
                self.ranges.remove(&(volume, pg));
            }
        }
    }

    /// Forget every region of a placement group (a full copy replaced it, or it moved).
    pub fn clear_pg(&mut self, pg: PgId) {
        self.ranges.retain(|(_, p), _| *p != pg);
    }

    /// Forget every region of a volume (it was deleted).
    pub fn clear_volume(&mut self, volume: u64) {
        self.ranges.retain(|(v, _), _| *v != volume);
    }

    /// Add everything `other` marks.
    pub fn merge(&mut self, other: &DirtyMap) {
        for r in other.regions() {
            self.mark(r.volume, r.pg, r.offset, r.len);
        }
    }

    /// Every dirty region, ordered by volume, placement group and offset; adjacent dirty
    /// granules come as one region.
    pub fn regions(&self) -> impl Iterator<Item = DirtyRegion> + '_ {
        self.ranges
            .iter()
            .flat_map(move |(&(volume, pg), set)| self.to_regions(volume, pg, set))
    }

    /// The dirty regions of the given placement groups.
    pub fn regions_of<'a>(&'a self, pgs: &'a [PgId]) -> impl Iterator<Item = DirtyRegion> + 'a {
        self.regions().filter(move |r| pgs.contains(&r.pg))
    }

    fn to_regions<'a>(
        &'a self,
        volume: u64,
        pg: PgId,
        set: &'a BTreeMap<u64, u64>,
    ) -> impl Iterator<Item = DirtyRegion> + 'a {
        let g = self.granule_bytes;
        set.iter().map(move |(&start, &end)| {
            let offset = start.saturating_mul(g);
            DirtyRegion {
                volume,
                pg,
                offset,
                len: end.saturating_mul(g) - offset,
            }
        })
    }
}

/// Add [start, end) to a set of disjoint, non-adjacent ranges, merging what it touches.
fn insert_range(set: &mut BTreeMap<u64, u64>, mut start: u64, mut end: u64) {
    if let Some((&s, &e)) = set.range(..=start).next_back() {
        if e >= start {
            start = s;
            end = end.max(e);
            set.remove(&s);
        }
    }
    while let Some((&s, &e)) = set.range(start..).next() {
        if s > end {
            break;
        }
        end = end.max(e);
        set.remove(&s);
    }
    set.insert(start, end);
}

/// Take [start, end) out of a set of disjoint ranges, splitting what it cuts.
fn remove_range(set: &mut BTreeMap<u64, u64>, start: u64, end: u64) {
    let mut cut = Vec::new();
    if let Some((&s, &e)) = set.range(..start).next_back() {
        if e > start {
            cut.push((s, e));
        }
    }
    cut.extend(set.range(start..end).map(|(&s, &e)| (s, e)));
    for (s, e) in cut {
        set.remove(&s);
        if s < start {
            set.insert(s, start);
        }
        if e > end {
            set.insert(end, e);
        }
    }
}

/// The serialised form: the granule and the ranges as a flat list (JSON maps need string
/// keys, and a list is what a person reading it expects anyway).
#[derive(Serialize, Deserialize)]
struct DirtyMapRecord {
    granule_bytes: u64,
    /// (volume, pg, first granule, end granule)
    ranges: Vec<(u64, PgId, u64, u64)>,
}

impl From<DirtyMap> for DirtyMapRecord {
    fn from(map: DirtyMap) -> Self {
        DirtyMapRecord {
            granule_bytes: map.granule_bytes,
            ranges: map
                .ranges
                .iter()
                .flat_map(|(&(v, pg), set)| set.iter().map(move |(&s, &e)| (v, pg, s, e)))
                .collect(),
        }
    }
}

impl TryFrom<DirtyMapRecord> for DirtyMap {
    type Error = PlacementError;

    fn try_from(record: DirtyMapRecord) -> Result<Self, Self::Error> {
        let mut map = DirtyMap::new(record.granule_bytes)?;
        for (v, pg, s, e) in record.ranges {
            if s < e {
                insert_range(map.ranges.entry((v, pg)).or_default(), s, e);
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const MIB: u64 = 1 << 20;

    #[test]
    fn marks_round_out_to_granules_and_merge() {
        let mut d = DirtyMap::default();
        d.mark(1, 2, MIB + 10, 10);
        d.mark(1, 2, 2 * MIB, MIB);
        d.mark(1, 3, 0, 1);
        let regions: Vec<_> = d.regions().collect();
        assert_eq!(
            regions,
            vec![
                DirtyRegion {
                    volume: 1,
                    pg: 2,
                    offset: MIB,
                    len: 2 * MIB
                },
                DirtyRegion {
                    volume: 1,
                    pg: 3,
                    offset: 0,
                    len: MIB
                },
            ]
        );
        assert!(d.is_dirty(1, 2, 3 * MIB - 1));
        assert!(!d.is_dirty(1, 2, 3 * MIB));
        assert_eq!(d.regions_of(&[3]).count(), 1);
    }

    #[test]
    fn clearing_what_was_returned_empties_the_map() {
        let mut d = DirtyMap::default();
        d.mark(1, 2, 5 * MIB, 7 * MIB + 3);
        d.mark(4, 0, u64::MAX - 5, 100);
        for r in d.regions().collect::<Vec<_>>() {
            d.clear(r.volume, r.pg, r.offset, r.len);
        }
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn a_partial_clear_keeps_the_granule() {
        let mut d = DirtyMap::default();
        d.mark(1, 1, 0, 3 * MIB);
        d.clear(1, 1, 10, 2 * MIB);
        assert_eq!(d.granules(), 2);
        assert!(d.is_dirty(1, 1, 0));
        assert!(!d.is_dirty(1, 1, MIB));
        assert!(d.is_dirty(1, 1, 2 * MIB));
    }

    #[test]
    fn a_zero_granule_is_refused() {
        assert_eq!(DirtyMap::new(0), Err(PlacementError::ZeroGranule));
    }

    #[test]
    fn the_map_serialises() {
        let mut d = DirtyMap::new(4096).unwrap();
        d.mark(1, 2, 0, 10_000);
        d.mark(3, 4, 1 << 30, 1);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<DirtyMap>(&json).unwrap(), d);
        assert!(serde_json::from_str::<DirtyMap>(r#"{"granule_bytes":0,"ranges":[]}"#).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Mark(u64, PgId, u64, u64),
        Clear(u64, PgId, u64, u64),
        ClearPg(PgId),
        ClearVolume(u64),
    }

    const G: u64 = 16;

    fn op() -> impl Strategy<Value = Op> {
        let target = (0u64..3, 0u32..3, 0u64..40 * G, 0u64..12 * G);
        prop_oneof![
            4 => target.clone().prop_map(|(v, p, o, l)| Op::Mark(v, p, o, l)),
            3 => target.prop_map(|(v, p, o, l)| Op::Clear(v, p, o, l)),
            1 => (0u32..3).prop_map(Op::ClearPg),
            1 => (0u64..3).prop_map(Op::ClearVolume),
        ]
    }

    /// The model: a set of dirty (volume, pg, granule).
    fn apply(model: &mut BTreeSet<(u64, PgId, u64)>, op: &Op) {
        match *op {
            Op::Mark(v, p, o, l) if l > 0 => {
                for g in o / G..(o + l).div_ceil(G) {
                    model.insert((v, p, g));
                }
            }
            Op::Mark(..) => {}
            Op::Clear(v, p, o, l) => {
                for g in o.div_ceil(G)..(o + l) / G {
                    model.remove(&(v, p, g));
                }
            }
            Op::ClearPg(p) => model.retain(|&(_, q, _)| q != p),
            Op::ClearVolume(v) => model.retain(|&(w, _, _)| w != v),
        }
    }

    fn granules_of(d: &DirtyMap) -> BTreeSet<(u64, PgId, u64)> {
        d.regions()
            .flat_map(|r| (r.offset / G..(r.offset + r.len) / G).map(move |g| (r.volume, r.pg, g)))
            .collect()
    }

    proptest! {
        #[test]
        fn behaves_like_a_set_of_granules(ops in proptest::collection::vec(op(), 0..60)) {
            let mut d = DirtyMap::new(G).unwrap();
            let mut model = BTreeSet::new();
            for op in &ops {
                match *op {
                    Op::Mark(v, p, o, l) => d.mark(v, p, o, l),
                    Op::Clear(v, p, o, l) => d.clear(v, p, o, l),
                    Op::ClearPg(p) => d.clear_pg(p),
                    Op::ClearVolume(v) => d.clear_volume(v),
                }
                apply(&mut model, op);
            }
            prop_assert_eq!(granules_of(&d), model.clone());
            prop_assert_eq!(d.granules(), model.len() as u64);
            prop_assert_eq!(d.is_empty(), model.is_empty());
            for &(v, p, g) in &model {
                prop_assert!(d.is_dirty(v, p, g * G + G / 2));
            }
            // Regions are maximal: sorted, never touching within one (volume, pg).
            let regions: Vec<_> = d.regions().collect();
            for pair in regions.windows(2) {
                if (pair[0].volume, pair[0].pg) == (pair[1].volume, pair[1].pg) {
                    prop_assert!(pair[0].offset + pair[0].len < pair[1].offset);
                }
            }
        }

        #[test]
        fn merge_is_union(a in proptest::collection::vec(op(), 0..30), b in proptest::collection::vec(op(), 0..30)) {
            let build = |ops: &[Op]| {
                let mut d = DirtyMap::new(G).unwrap();
                for op in ops {
                    if let Op::Mark(v, p, o, l) = *op {
                        d.mark(v, p, o, l);
                    }
                }
                d
            };
            let (mut x, y) = (build(&a), build(&b));
            let expected: BTreeSet<_> = granules_of(&x).union(&granules_of(&y)).copied().collect();
            x.merge(&y);
            prop_assert_eq!(granules_of(&x), expected);
        }
    }
}
