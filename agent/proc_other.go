//go:build !unix

package agent

import "os/exec"

// setProcessGroup is a no-op where process groups do not exist; WaitDelay still bounds Wait.
func setProcessGroup(cmd *exec.Cmd) {}
