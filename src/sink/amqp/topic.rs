//! RabbitMQ's topic matching (`*` one word, `#` zero or more words), to tell whether a binding
//! catches a routing key walrelay will produce.

/// True when a topic binding key matches a routing key.
pub fn matches(binding: &str, key: &str) -> bool {
    let b: Vec<&str> = binding.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    match_words(&b, &k)
}

fn match_words(b: &[&str], k: &[&str]) -> bool {
    match b.split_first() {
        None => k.is_empty(),
        Some((&"#", rest)) => (0..=k.len()).any(|skip| match_words(rest, &k[skip..])),
        Some((&w, rest)) => match k.split_first() {
            Some((&kw, krest)) if w == "*" || w == kw => match_words(rest, krest),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn topic_rules() {
        assert!(matches("#", "public.orders.insert"));
        assert!(matches("#", ""));
        assert!(matches("public.orders.*", "public.orders.insert"));
        assert!(!matches("public.orders.*", "public.orders"));
        assert!(matches("public.#", "public.orders.insert"));
        assert!(matches("public.orders.#", "public.orders"));
        assert!(matches("*.*.delete", "public.users.delete"));
        assert!(!matches("*.*.delete", "public.users.insert"));
        assert!(matches("#.insert", "a.b.c.insert"));
        assert!(!matches("public.orders.insert", "public.orders.update"));
    }
}
