package jail_test

import (
	"os"
	"testing"

	"instarfs/vmm/jail"
	"instarfs/vmm/sandboxtest"
)

// TestConformance runs the sandbox conformance suite against the jail, which
// must settle on its strongest level here, against the jail held at each
// weaker level, and against Plain, which confines nothing.
func TestConformance(t *testing.T) {
	unstartableJail, unstartablePlain := jail.Unstartable()
	t.Run("jail", func(t *testing.T) {
		sb := jail.New()
		sandboxtest.Run(t, sb, sandboxtest.Options{Unstartable: unstartableJail})
		if sb.Level() != jail.LevelUserNS {
			t.Errorf("level %v, want %v", sb.Level(), jail.LevelUserNS)
		}
	})
	weaker := []jail.Level{jail.LevelNoNS}
	if os.Geteuid() == 0 {
		weaker = append(weaker, jail.LevelRootNS)
	}
	for _, level := range weaker {
		t.Run("jail at "+level.String(), func(t *testing.T) {
			sandboxtest.Run(t, jail.NewAt(level, nil), sandboxtest.Options{})
		})
	}
	t.Run("plain", func(t *testing.T) {
		sandboxtest.Run(t, &jail.Plain{}, sandboxtest.Options{Unconfined: true, Unstartable: unstartablePlain})
	})
}
