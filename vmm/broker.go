package vmm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"instarfs/proto"
)

// Broker answers a worker's questions for further images (proto.BrokerRequest)
// during one run: it applies the host's policy and returns the reply and the
// files that go with it (the opened file first, then the reopened ones, in
// the reply's order). The broker keeps ownership of the files. Answer is
// called from one goroutine at a time. Every backend passes its workers'
// questions on: the jail's on a socket, the microvm's over a port (its guest
// reads a file as a drive attached when it boots, at most twice, or through
// the port).
type Broker interface {
	Answer(req proto.BrokerRequest) (proto.BrokerReply, []*os.File)
}

// brokerConn is the host's end of a run's broker socket.
type brokerConn struct {
	host, child *os.File
	broker      Broker

	mu  sync.Mutex
	err error // the worker broke the broker protocol
}

// newBrokerConn creates the socketpair of a run; child goes to the worker.
func newBrokerConn(b Broker) (*brokerConn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("broker socket: %w", err)
	}
	return &brokerConn{
		host:   os.NewFile(uintptr(fds[0]), "broker"),
		child:  os.NewFile(uintptr(fds[1]), "broker-worker"),
		broker: b,
	}, nil
}

// serve answers questions until the worker's end closes or the worker breaks
// the protocol; then it calls kill.
func (c *brokerConn) serve(kill func()) {
	proto.WarmJSON() // while the worker starts: its first question is answered sooner
	buf := make([]byte, proto.MaxBrokerBytes+1)
	for n := 0; ; n++ {
		m, _, flags, _, err := unix.Recvmsg(int(c.host.Fd()), buf, nil, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			n--
			continue
		}
		if err != nil || m == 0 {
			return // the worker ended
		}
		var req proto.BrokerRequest
		switch {
		case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || m > proto.MaxBrokerBytes:
			err = fmt.Errorf("a broker request longer than %d bytes", proto.MaxBrokerBytes)
		case n >= proto.MaxBrokerRequests:
			err = fmt.Errorf("more than %d broker requests", proto.MaxBrokerRequests)
		default:
			if err = proto.Decode(buf[:m], &req); err != nil {
				err = fmt.Errorf("broker request: %v", err)
			}
		}
		if err == nil {
			err = c.answer(req)
		}
		if err != nil {
			c.fail(err)
			kill()
			return
		}
	}
}

func (c *brokerConn) answer(req proto.BrokerRequest) error {
	reply, files := c.broker.Answer(req)
	b, err := json.Marshal(reply)
	if err != nil {
		return err
	}
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(int(c.host.Fd()), b, oob, nil, 0); err != nil && !errors.Is(err, unix.EPIPE) {
		return fmt.Errorf("answering the worker: %v", err)
	}
	return nil
}

func (c *brokerConn) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
	}
}

// violation returns how the worker broke the broker protocol, or nil.
func (c *brokerConn) violation() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *brokerConn) closeChild() { c.child.Close() }
func (c *brokerConn) closeHost()  { c.host.Close() }
