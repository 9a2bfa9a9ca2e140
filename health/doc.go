// Package health decides whether each backend (MTA) of a pool is up, and how loaded it is.
//
// It owns the active checks: the SMTP probe ([SMTPProbe]: connect, banner, EHLO, optional
// STARTTLS and MAIL/RCPT, QUIT), the rise/fall hysteresis ([Step]) that turns probe results
// into up/down verdicts, and the scheduling of the SMTP and queue-depth agent probes of every
// backend ([Manager]), including the wait a starting node makes for every backend's first
// verdict ([Manager.FirstVerdicts]). It takes the spec with config's defaults applied and
// never defaults it again; only the probe's HELO name, which differs per node, is resolved
// here. Verdicts and agent answers leave the package through one narrow
// [Sink] (satisfied by *pool.Table), which owns the pool view; health never writes a view.
//
// It must not proxy traffic or pick backends: it decides health, the balancer acts on it.
// It sends nothing to a backend but probes, and it ends every SMTP probe with QUIT, so
// that the MTA logs a clean session rather than a lost connection.
package health
