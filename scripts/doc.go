// Package scripts holds the repository's shell scripts (deps.sh, fuzz.sh) and the Go tests
// that run them against fake tools; it has no code of its own.
package scripts
