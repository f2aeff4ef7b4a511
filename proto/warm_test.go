package proto

import (
	"reflect"
	"testing"
)

// TestWarmValuesRoundTrip checks that every value WarmJSON warms with comes
// back whole from its round trip: one that failed to decode would leave its
// type's decoding cold.
func TestWarmValuesRoundTrip(t *testing.T) {
	for _, v := range warmValues() {
		back, err := roundTrip(v)
		if err != nil {
			t.Fatalf("%T: %v", v, err)
		}
		if !reflect.DeepEqual(back, v) {
			t.Errorf("%T: %+v after the round trip, want %+v", v, back, v)
		}
	}
}
