//go:build linux

package balancer

import "golang.org/x/sys/unix"

// Bulk data goes from socket to socket through a pipe (splice(2)): the bytes never enter
// user space. A pipe belongs to a direction only while it holds bytes; the loop keeps a
// few spare ones.

// evPipe is a pipe for splice.
type evPipe struct{ r, w int }

func (p *evPipe) close() { sysClose(p.r); sysClose(p.w) }

// spliceMax is what one splice into the pipe asks for: the pipe's default capacity.
const (
	spliceMax   = 64 << 10
	spliceSmall = 4 << 10 // a splice moving less than this ends the bulk: back to reads
	sparePipes  = 8
)

func (lp *evLoop) getPipe() (*evPipe, error) {
	if n := len(lp.pipes); n > 0 {
		p := lp.pipes[n-1]
		lp.pipes = lp.pipes[:n-1]
		return p, nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil, err
	}
	return &evPipe{r: fds[0], w: fds[1]}, nil
}

// putPipe gives p back; a pipe that still holds bytes (empty false) is closed.
func (lp *evLoop) putPipe(p *evPipe, empty bool) {
	if empty && len(lp.pipes) < sparePipes {
		lp.pipes = append(lp.pipes, p)
		return
	}
	p.close()
}

// splice moves d's bulk from src to dst through a pipe, until src has nothing (the pipe
// goes back), dst takes no more (the pipe waits with its bytes for dst's EPOLLOUT), or
// src's EOF.
func (c *evConn) splice(d *evDir, src, dst int) {
	if d.pipe == nil {
		p, err := c.lp.getPipe()
		if err != nil { // out of descriptors: copy through user space instead
			d.bulk = false
			c.relay(d, src, dst)
			return
		}
		d.pipe = p
	}
	for {
		n, err := sysSplice(src, d.pipe.w, spliceMax)
		if n > 0 {
			c.last = c.lp.Now()
			d.pipeN += int32(n)
			if !c.drainPipe(d, dst) {
				return
			}
			if n < spliceSmall { // short lines again: back to reads
				d.bulk = false
				c.releasePipe(d)
				c.relay(d, src, dst)
				return
			}
			// Unlike a read, a short splice does not mean the socket is drained: the
			// pipe takes at most 16 segments, and small segments fill it early. Go on
			// until EAGAIN, or the edge-triggered socket raises no new event.
			continue
		}
		switch {
		case err == nil: // EOF
			c.releasePipe(d)
			d.eof = true
			c.halfClose(d, dst)
			return
		case err == unix.EAGAIN: // the pipe is empty here: src has nothing
			c.releasePipe(d)
			return
		case err == unix.EINTR:
			continue
		}
		c.fail(d, err)
		return
	}
}

// drainPipe splices the pipe's bytes to dst; false when some are left (dst is full, or
// failed).
func (c *evConn) drainPipe(d *evDir, dst int) bool {
	for d.pipeN > 0 {
		n, err := sysSplice(d.pipe.r, dst, int(d.pipeN))
		if n > 0 {
			d.pipeN -= int32(n)
			d.n += int64(n)
			continue
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil && err != unix.EAGAIN {
			c.fail(d, err)
		}
		return false
	}
	return true
}

func (c *evConn) releasePipe(d *evDir) {
	if d.pipe != nil && d.pipeN == 0 {
		c.lp.putPipe(d.pipe, true)
		d.pipe = nil
	}
}
