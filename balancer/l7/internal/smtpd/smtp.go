// Package smtpd is the SMTP server of mxlb's smtp mode: a fork of the server half of
// github.com/emersion/go-smtp v0.25.1 (MIT, see LICENSE), cut to what package l7 uses and
// made cheaper per command. What differs from upstream:
//
//   - replies are built with append into one buffer per connection and written in one
//     write (upstream formats each line with fmt through net/textproto, splitting and
//     joining the text, and flushes each line of a multi-line reply on its own);
//   - command lines are read from a plain bufio.Reader (no textproto.Conn, whose writer
//     mxlb does not need), and MAIL and RCPT parameters are parsed without a map or
//     slices per command; the DATA reader and the recipient list are reused;
//   - no AUTH (mxlb's wire answers AUTH before the server sees it) and no client.
//
// The envelope and error types are go-smtp's own (aliases), so package smtpreply's
// errors and replies work unchanged.
package smtpd

import (
	smtp "github.com/emersion/go-smtp"
)

type (
	BodyType         = smtp.BodyType
	DSNReturn        = smtp.DSNReturn
	MailOptions      = smtp.MailOptions
	DSNNotify        = smtp.DSNNotify
	DSNAddressType   = smtp.DSNAddressType
	DeliverByMode    = smtp.DeliverByMode
	DeliverByOptions = smtp.DeliverByOptions
	PriorityProfile  = smtp.PriorityProfile
	RcptOptions      = smtp.RcptOptions
	EnhancedCode     = smtp.EnhancedCode
	SMTPError        = smtp.SMTPError
)

const (
	Body7Bit       = smtp.Body7Bit
	Body8BitMIME   = smtp.Body8BitMIME
	BodyBinaryMIME = smtp.BodyBinaryMIME

	DSNReturnFull    = smtp.DSNReturnFull
	DSNReturnHeaders = smtp.DSNReturnHeaders

	DSNNotifyNever   = smtp.DSNNotifyNever
	DSNNotifyDelayed = smtp.DSNNotifyDelayed
	DSNNotifyFailure = smtp.DSNNotifyFailure
	DSNNotifySuccess = smtp.DSNNotifySuccess

	DSNAddressTypeRFC822 = smtp.DSNAddressTypeRFC822
	DSNAddressTypeUTF8   = smtp.DSNAddressTypeUTF8

	DeliverByNotify = smtp.DeliverByNotify
	DeliverByReturn = smtp.DeliverByReturn

	PriorityUnspecified = smtp.PriorityUnspecified
	PriorityMIXER       = smtp.PriorityMIXER
	PrioritySTANAG4406  = smtp.PrioritySTANAG4406
	PriorityNSEP        = smtp.PriorityNSEP
)

var (
	// NoEnhancedCode: no enhanced code in the reply.
	NoEnhancedCode = smtp.NoEnhancedCode
	// EnhancedCodeNotSet: X.0.0 in the reply, X the code's class.
	EnhancedCodeNotSet = smtp.EnhancedCodeNotSet
	// ErrDataTooLarge is go-smtp's own (errors.Is holds across the two).
	ErrDataTooLarge = smtp.ErrDataTooLarge
)
