// The mxlb tcp kernel relay contender: mxlb tcp (engine evloop) whose frontend hands a
// session to the kernel relay (BPF sockhash) once krAfter bytes crossed it.

package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

const cMxTCPKR = "mxlb tcp kernel relay"

// krAfter is the frontend's kernel_relay_after: more than a one-message session moves
// (banner, EHLO, one small message, QUIT: about 1 KB with smtp-source), so the one-per-
// connection row shows what the option costs a session that never qualifies, and the
// persistent row a session handed over after its first messages.
const krAfter = 4096

// krYAML is the frontend's extra YAML.
func krYAML() string { return fmt.Sprintf(", kernel_relay_after: %d", krAfter) }

// krNote reads the contender's kernel relay status (admin API): whether the relay loaded,
// how many sessions it took.
func krNote(admin, what string) string {
	var st struct {
		KernelRelay *struct {
			Available  bool   `json:"available"`
			Error      string `json:"error"`
			Sessions   int64  `json:"sessions"`
			HandedOver uint64 `json:"handed_over"`
			Fallbacks  uint64 `json:"fallbacks"`
		} `json:"kernel_relay"`
	}
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + admin + "/api/v1/status")
	if err != nil {
		return fmt.Sprintf("%s: %s: status: %v", what, cMxTCPKR, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.KernelRelay == nil {
		return fmt.Sprintf("%s: %s: no kernel_relay in the status (%v)", what, cMxTCPKR, err)
	}
	k := st.KernelRelay
	if !k.Available {
		return fmt.Sprintf("%s: %s: **the kernel relay did not load** (%s): its figures are the user-space relay's", what, cMxTCPKR, k.Error)
	}
	return fmt.Sprintf("%s: %s: %d sessions handed to the kernel relay, %d fallbacks, %d still in it", what, cMxTCPKR, k.HandedOver, k.Fallbacks, k.Sessions)
}

// krSetup is the report's line on the contender.
func krSetup() string {
	return fmt.Sprintf("- mxlb tcp kernel relay: the same as mxlb tcp with the frontend's `kernel_relay_after: %d`: a session that moved "+
		"that many bytes goes to the kernel relay (a BPF sockhash with an SK_SKB verdict program; its CPU lands in softirq and kworkers, "+
		"which the whole chain counts). One-message connections (about 1 KB each) never qualify; persistent sessions do after a few messages.\n", krAfter)
}
