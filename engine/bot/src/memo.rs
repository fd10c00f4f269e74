//! A one-entry memo for values derived from commits (a plan, a policy comparison, the fleet
//! at a tip): the bot polls the same default-branch tip many times, and recomputing over a
//! fleet's files at every poll is what made a 1,000-cluster fleet stall.

use std::sync::Mutex;

/// The last value computed and the key it was computed for; a lookup with another key
/// misses. Poisoning is ignored (the memo is only a cache: a miss recomputes).
pub struct Memo<K, V> {
    last: Mutex<Option<(K, V)>>,
}

impl<K: PartialEq, V: Clone> Memo<K, V> {
    /// An empty memo.
    pub fn new() -> Memo<K, V> {
        Memo {
            last: Mutex::new(None),
        }
    }

    /// The value remembered for `key`, `None` when the memo holds another key or nothing.
    pub fn get(&self, key: &K) -> Option<V> {
        let g = self.last.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().filter(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    /// Remembers `value` for `key`, replacing what was remembered.
    pub fn put(&self, key: K, value: V) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((key, value));
    }
}

impl<K: PartialEq, V: Clone> Default for Memo<K, V> {
    fn default() -> Self {
        Memo::new()
    }
}

#[cfg(test)]
mod tests {
    use super::Memo;

    #[test]
    fn a_memo_answers_only_for_the_key_it_holds() {
        let m: Memo<(String, String), u32> = Memo::new();
        let k = ("tip".to_string(), "policy".to_string());
        assert_eq!(m.get(&k), None);
        m.put(k.clone(), 7);
        assert_eq!(m.get(&k), Some(7));
        assert_eq!(m.get(&("tip".into(), "other".into())), None);
        m.put(("b".into(), "c".into()), 8);
        assert_eq!(m.get(&k), None, "a new key replaces the old one");
    }
}
