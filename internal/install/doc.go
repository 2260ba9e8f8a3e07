// Package install wires containerd to the daemon on a node and takes it out again: it writes
// the mirror's hosts.toml, checks containerd's config.toml for what would keep the mirror
// (or, in proxy mode, the content plugin) from being used, and fixes that when asked.
//
// Files are edited as text, line by line, never re-encoded: comments, ordering and quoting
// of everything else stay as the operator wrote them. TOML is parsed (BurntSushi/toml) to
// understand a file and to check every edit: an edit whose result does not parse, or does not
// say what was intended, is refused with a message asking for a manual change. Lines the
// installer writes carry a "# containerd-blobcache" marker. Every file is backed up next to
// itself (FILE.blobcache-backup) before its first change; uninstall restores the backups and
// removes the files that install created.
package install
