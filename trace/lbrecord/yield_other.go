//go:build !linux

package lbrecord

func osYield() {}
