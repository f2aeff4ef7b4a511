// Command guestinit is the /init of the microvm guest (see package guest).
// `make guest` builds it static, with CGO_ENABLED=0.
package main

import "instarfs/vmm/microvm/guest"

func main() { guest.Main() }
