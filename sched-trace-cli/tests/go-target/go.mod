module schedtarget

go 1.22
