// Package adminapi is the admin API's wire format, shared by the daemon (plugin/admin) and
// the CLI: the paths, and the JSON of every request and response. Field names are stable;
// new fields are added, never renamed.
package adminapi
