//! Room names: `#` and at least one more character, no control characters.

/// Longest room name in bytes, `#` included.
pub const MAX_ROOM_LEN: usize = 128;

/// A room is `#` and 1..=127 more bytes without control characters.
pub fn check_room(room: &str) -> Result<(), String> {
    let valid = room.len() > 1
        && room.len() <= MAX_ROOM_LEN
        && room.starts_with('#')
        && !room.chars().any(char::is_control);
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid room: {room:?} (a room is '#' and 1 to {} bytes of text)",
            MAX_ROOM_LEN - 1
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(check_room("#lobby").is_ok());
        assert!(check_room("#").is_err());
        assert!(check_room("lobby").is_err());
        assert!(check_room("#a\nb").is_err());
        assert!(check_room(&format!("#{}", "x".repeat(MAX_ROOM_LEN - 1))).is_ok());
        assert!(check_room(&format!("#{}", "x".repeat(MAX_ROOM_LEN))).is_err());
    }
}
