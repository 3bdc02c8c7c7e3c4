//! The DNS dimensions of the fault table: question names (an LPM trie over reversed name keys,
//! `chaos_common::dns`) and query types (a hash map), mirrored here so that adding or removing
//! a fault writes only the entries that change.
//!
//! As with address prefixes, the kernel's lookup returns only the longest stored key that is a
//! prefix of the question's, so the value stored for a name is the union of the faults of every
//! listed suffix of it (itself included): `example.com` for one fault and `a.example.com` for
//! another make the `a.example.com` entry carry both.

use std::collections::HashMap;

use chaos_common::Bitmap;

/// One write for the kernel: `Some` inserts or replaces, `None` deletes.
pub type NameWrite = (Vec<u8>, Option<Bitmap>);
/// One write to the type table.
pub type TypeWrite = (u16, Option<Bitmap>);

/// Whether `a` is `b` or one of its suffixes at a label boundary, in key form: a byte prefix of
/// `b` that ends where one of `b`'s labels ends.
fn is_suffix_key(a: &[u8], b: &[u8]) -> bool {
    if !b.starts_with(a) {
        return false;
    }
    // Walk b's labels: a must end on a boundary.
    let mut p = 0;
    while p < a.len() {
        p += 1 + usize::from(b[p]);
    }
    p == a.len()
}

/// The mirror of `CHAOS_DNS_NAMES` and `CHAOS_DNS_TYPES`.
#[derive(Debug, Default)]
pub struct DnsTable {
    /// Faults that listed each name.
    own: HashMap<Vec<u8>, Bitmap>,
    /// What the kernel holds for each listed name: the union of `own` over its suffixes.
    stored: HashMap<Vec<u8>, Bitmap>,
    /// Faults that listed each query type.
    types: HashMap<u16, Bitmap>,
}

impl DnsTable {
    /// Names stored (all faults together).
    #[must_use]
    pub fn names(&self) -> usize {
        self.stored.len()
    }

    /// Types stored.
    #[must_use]
    pub fn types(&self) -> usize {
        self.types.len()
    }

    /// Entries the table would hold with these added: (names, types).
    #[must_use]
    pub fn needed(&self, names: &[Vec<u8>], types: &[u16]) -> (usize, usize) {
        let mut new_names: Vec<&Vec<u8>> = names
            .iter()
            .filter(|n| !self.own.contains_key(*n))
            .collect();
        new_names.sort_unstable();
        new_names.dedup();
        let mut new_types: Vec<u16> = types
            .iter()
            .copied()
            .filter(|t| !self.types.contains_key(t))
            .collect();
        new_types.sort_unstable();
        new_types.dedup();
        (
            self.stored.len() + new_names.len(),
            self.types.len() + new_types.len(),
        )
    }

    fn union_of_suffixes(&self, key: &[u8]) -> Bitmap {
        let mut v = Bitmap::EMPTY;
        let mut p = 0;
        loop {
            if let Some(b) = self.own.get(&key[..p]) {
                v = v.or(b);
            }
            if p >= key.len() {
                return v;
            }
            p += 1 + usize::from(key[p]);
            p = p.min(key.len());
        }
    }

    /// Stored names that have `key` as a suffix (itself included).
    fn under(&self, key: &[u8]) -> Vec<Vec<u8>> {
        self.stored
            .keys()
            .filter(|k| is_suffix_key(key, k))
            .cloned()
            .collect()
    }

    /// Adds `slot` with its names and types; returns the writes, names before types.
    pub fn add(
        &mut self,
        slot: u32,
        names: &[Vec<u8>],
        types: &[u16],
    ) -> (Vec<NameWrite>, Vec<TypeWrite>) {
        for n in names {
            self.own.entry(n.clone()).or_default().insert(slot);
            self.stored.entry(n.clone()).or_default();
        }
        let name_writes = self.refresh(names);
        let mut type_writes = Vec::new();
        for &t in types {
            let e = self.types.entry(t).or_default();
            e.insert(slot);
            type_writes.push((t, Some(*e)));
        }
        type_writes.sort_unstable_by_key(|(t, _)| *t);
        type_writes.dedup_by_key(|(t, _)| *t);
        (name_writes, type_writes)
    }

    /// Removes `slot`'s names and types; returns the writes.
    pub fn remove(
        &mut self,
        slot: u32,
        names: &[Vec<u8>],
        types: &[u16],
    ) -> (Vec<NameWrite>, Vec<TypeWrite>) {
        for n in names {
            if let Some(own) = self.own.get_mut(n) {
                own.remove(slot);
                if own.is_empty() {
                    self.own.remove(n);
                }
            }
        }
        let name_writes = self.refresh(names);
        let mut type_writes = Vec::new();
        for &t in types {
            if let Some(e) = self.types.get_mut(&t) {
                e.remove(slot);
                if e.is_empty() {
                    self.types.remove(&t);
                    type_writes.push((t, None));
                } else {
                    type_writes.push((t, Some(*e)));
                }
            }
        }
        type_writes.sort_unstable_by_key(|(t, _)| *t);
        type_writes.dedup_by_key(|(t, _)| *t);
        (name_writes, type_writes)
    }

    /// Recomputes every stored entry under the touched names; drops the ones no fault lists.
    fn refresh(&mut self, touched: &[Vec<u8>]) -> Vec<NameWrite> {
        let mut affected: Vec<Vec<u8>> = touched.iter().flat_map(|n| self.under(n)).collect();
        affected.sort_unstable();
        affected.dedup();
        let mut writes = Vec::new();
        for k in affected {
            if !self.own.contains_key(&k) {
                self.stored.remove(&k);
                writes.push((k, None));
                continue;
            }
            let v = self.union_of_suffixes(&k);
            if self.stored.get(&k) != Some(&v) || touched.contains(&k) {
                self.stored.insert(k.clone(), v);
                writes.push((k, Some(v)));
            }
        }
        writes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Vec<u8> {
        let (k, n) = chaos_common::dns::name_key(s).unwrap();
        k[..n].to_vec()
    }

    /// The kernel's LPM answer for a question name: the longest stored byte prefix.
    fn lookup(t: &DnsTable, name: &str) -> Bitmap {
        let q = key(name);
        (0..=q.len())
            .rev()
            .find_map(|l| t.stored.get(&q[..l]))
            .copied()
            .unwrap_or_default()
    }

    #[test]
    fn suffix_keys() {
        assert!(is_suffix_key(&key("example.com"), &key("a.example.com")));
        assert!(is_suffix_key(&key("example.com"), &key("example.com")));
        assert!(!is_suffix_key(&key("example.com"), &key("badexample.com")));
        assert!(is_suffix_key(&key("."), &key("x.y")));
    }

    #[test]
    fn nested_names_of_different_faults_both_match() {
        let mut t = DnsTable::default();
        t.add(1, &[key("example.com")], &[]);
        let (w, _) = t.add(2, &[key("a.example.com")], &[1, 28]);
        assert_eq!(w.len(), 1, "only the new entry: {w:?}");
        let both = lookup(&t, "x.A.example.COM");
        assert!(both.contains(1) && both.contains(2));
        let one = lookup(&t, "b.example.com");
        assert!(one.contains(1) && !one.contains(2));
        assert!(lookup(&t, "badexample.com").is_empty());
        assert!(lookup(&t, "com").is_empty());
        // A wider name added later is carried into the narrower entry.
        let (w, _) = t.add(3, &[key("com")], &[]);
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(lookup(&t, "x.a.example.com").contains(3));
        // Removal restores the values and deletes unused entries.
        let (w, ty) = t.remove(2, &[key("a.example.com")], &[1, 28]);
        assert!(w.contains(&(key("a.example.com"), None)));
        assert_eq!(ty, vec![(1, None), (28, None)]);
        assert!(!lookup(&t, "x.a.example.com").contains(2));
        t.remove(1, &[key("example.com")], &[]);
        t.remove(3, &[key("com")], &[]);
        assert_eq!((t.names(), t.types()), (0, 0));
    }

    #[test]
    fn capacity_counts_only_new_entries() {
        let mut t = DnsTable::default();
        t.add(1, &[key("a.test"), key("b.test")], &[1]);
        assert_eq!(
            t.needed(&[key("a.test"), key("c.test"), key("c.test")], &[1, 2]),
            (3, 2)
        );
    }
}
