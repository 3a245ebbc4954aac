"""A snapshot on the node: the store and its entries, their checked files, archives, the rootfs
diff, /dev/shm, the files a worker reads back, and the page cache they are read from."""
