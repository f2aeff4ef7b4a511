package proto

import (
	"encoding/json"
	"reflect"
	"sync"

	"instarfs/errcode"
)

// WarmJSON builds encoding/json's caches for the types that cross between the
// host and the worker on every command, once per process. A process's first
// encoding or decoding of a type reflects over it and its fields: in both
// processes together that took about 0.5 ms of a small command's critical
// path (the request, the first question to the broker and its answer). The
// host calls it while the worker starts, the worker while it confines
// itself: on a processor that would otherwise wait.
func WarmJSON() {
	warmOnce.Do(func() {
		for _, v := range warmValues() {
			roundTrip(v)
		}
	})
}

var warmOnce sync.Once

// warmValues are values of the types WarmJSON warms, with the fields set
// whose types must be warmed too.
func warmValues() []any {
	info := &Info{Format: "qcow2", FormatSpecific: &FormatSpecific{Type: "qcow2", Data: &Qcow2Specific{}}}
	return []any{
		&Request{Op: OpProbe, Images: []ImageRef{{Name: "top"}}},
		&BrokerRequest{Info: info, Open: OpenBacking},
		&BrokerReply{Image: 1, Error: &errcode.Error{Code: errcode.Internal}},
		&Message{Result: json.RawMessage("{}"), Error: &errcode.Error{Code: errcode.Internal}, Cut: &Cut{Length: 1}},
		info,
	}
}

// roundTrip encodes v, a pointer, and decodes it into a new value of its
// type, which it returns.
func roundTrip(v any) (any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	back := reflect.New(reflect.TypeOf(v).Elem()).Interface()
	return back, Decode(b, back)
}
