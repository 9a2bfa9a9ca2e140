//go:build !linux

package frontend

func freebind(uintptr, string) error { return nil }
