package initramfs

import "testing"

func TestLocalMounts(t *testing.T) {
	mi := []byte(`22 1 0:21 / / rw,relatime - rootfs rootfs rw
25 22 254:0 / /var rw,relatime shared:1 - ext4 /dev/vda rw
26 25 254:16 / /var/lib/my\040store ro,relatime shared:2 - xfs /dev/vdb ro
27 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw
28 22 0:22 / /run rw - tmpfs tmpfs rw
garbage line
`)
	got := LocalMounts(mi)
	want := []Mount{{Point: "/var/lib/my store", FSType: "xfs", Source: "/dev/vdb", ReadOnly: true}, {Point: "/var", FSType: "ext4", Source: "/dev/vda"}}
	if len(got) != len(want) {
		t.Fatalf("LocalMounts = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mount %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}
