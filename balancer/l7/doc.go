// Package l7 is mxlb's SMTP-speaking frontend (mode: smtp). It terminates the client's
// SMTP session (package internal/smtpd, a fork of emersion/go-smtp's server that answers
// as go-smtp does with less work per command: PIPELINING, 8BITMIME, SMTPUTF8, DSN,
// CHUNKING, SIZE, STARTTLS with a reloadable certificate) and relays each mail
// transaction to a backend MTA that the pool view offers, picked per transaction. It
// passes the client's identity on (Postfix XCLIENT, or a PROXY v1/v2 header), relays the
// backend's replies, and answers the client's DATA with 250 only after a backend said
// 250. The backend session of a transaction opens at its first recipient.
//
// Between the client and go-smtp sits the wire (wire.go), a command filter that gives
// the session Postfix's manners: message lines of any length pass byte for byte, a too
// long command line is refused without ending the session, unknown commands and AUTH get
// Postfix's replies, STARTTLS is run there, and junk commands and errors are limited
// (JunkCommandLimit, HardErrorLimit). mxlb's own replies are in package smtpreply.
//
// No mail is lost and none is accepted without a backend's acceptance: the transaction
// (envelope and message, held in memory then in a temporary file) is replayed on the next
// backend, then on the fallback pool, when a backend refuses the connect, answers 421 or a
// 4xx to MAIL, DATA or the end of data, or drops the connection before its final reply.
// A 5xx is never retried. A lost connection after the final dot but before the reply may
// leave a copy at that backend: delivery is at least once.
//
// Like package balancer it never decides health: it reads the immutable pool.View, bumps
// the atomic counters, and reports backends that keep tempfailing through
// Options.OnBackendFailing so the owner of health can act before the next probe.
package l7
