//! `gateway keys new|hash`: API keys for the key file.

use gateway::stages::auth::api_key;

use crate::KeysCmd;

/// `gateway keys new|hash`.
pub(crate) fn keys(cmd: KeysCmd) -> Result<(), String> {
    match cmd {
        KeysCmd::New {
            consumer,
            roles,
            expires,
        } => {
            // Refuse here what the key file would refuse later.
            api_key::check_id(&consumer).map_err(|m| format!("--consumer: {m}"))?;
            for r in &roles {
                api_key::check_id(r).map_err(|m| format!("--roles: {m}"))?;
            }
            if let Some(e) = &expires {
                api_key::check_datetime(e).map_err(|m| format!("--expires: {m}"))?;
            }
            let key = api_key::generate()?;
            println!("key (shown once; give it to {consumer} and keep no copy):\n{key}\n");
            println!(
                "key file lines (a new consumer; for an existing one add only the [[consumers.keys]] table):"
            );
            println!("[[consumers]]\nid = \"{consumer}\"");
            let roles: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
            println!("roles = [{}]", roles.join(", "));
            println!("[[consumers.keys]]");
            println!("hash = \"{}\"", api_key::hash_line(&key));
            println!("prefix = \"{}\"", api_key::shown_prefix(&key));
            if let Some(e) = expires {
                println!("expires = {e}");
            }
            Ok(())
        }
        KeysCmd::Hash => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| format!("reading the key from standard input: {e}"))?;
            let key = line.trim_end_matches(['\r', '\n']);
            if key.is_empty() {
                return Err("no key on standard input".into());
            }
            println!("hash = \"{}\"", api_key::hash_line(key));
            println!("prefix = \"{}\"", api_key::shown_prefix(key));
            Ok(())
        }
    }
}
