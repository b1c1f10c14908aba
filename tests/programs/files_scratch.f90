! files_scratch: a Fortran program with a status='scratch' file (issue 14).
!
! gfortran creates a scratch file and unlinks it at once: the data lives only in a
! file that is deleted while open. The program keeps NREC records of NW 64-bit
! integers in an unformatted direct-access scratch file; every step reads each record
! back, checks it against the checksum it kept in memory for that record, rewrites it
! from its previous values, and writes one line to the formatted file result.txt
! (open for writing from the start to the end). A restart that did not put the
! scratch file back as it was at the checkpoint reads records written after the
! checkpoint: "FAIL: ... changed" or different checksums.
!
! Gate protocol of lib/crtest.h, written here (Fortran cannot include it): READY
! (and a line in $CR_STARTS_LOG), "hold k" / "go k" around a wait while
! $CR_GATE_DIR/gate-k exists (removing gate-k.ping when it appears), PASS at the end.
!
! usage: files_scratch [STEPS]   (default 12; gates at every 4th step)
module crgate
  use, intrinsic :: iso_c_binding, only: c_int
  use, intrinsic :: iso_fortran_env, only: output_unit
  implicit none
  interface
    function usleep(us) bind(c, name='usleep')
      import :: c_int
      integer(c_int), value :: us
      integer(c_int) :: usleep
    end function usleep
  end interface
contains
  subroutine say(text)
    character(len=*), intent(in) :: text
    write (output_unit, '(a)') text
    flush (output_unit)
  end subroutine say

  subroutine fail(text)
    character(len=*), intent(in) :: text
    call say('FAIL: '//text)
    error stop 1
  end subroutine fail

  function env(name) result(v)
    character(len=*), intent(in) :: name
    character(len=:), allocatable :: v
    integer :: n, st
    call get_environment_variable(name, length=n, status=st)
    if (st /= 0 .or. n == 0) then
      v = ''
      return
    end if
    allocate (character(len=n) :: v)
    call get_environment_variable(name, value=v)
  end function env

  subroutine started()
    character(len=:), allocatable :: log
    integer :: u
    log = env('CR_STARTS_LOG')
    if (len(log) > 0) then
      open (newunit=u, file=log, status='unknown', position='append', action='write')
      write (u, '(a)') 'READY'
      close (u)
    end if
    call say('READY')
  end subroutine started

  subroutine gate(k)
    integer, intent(in) :: k
    character(len=:), allocatable :: dir, path
    character(len=16) :: num
    logical :: there
    integer :: u, st, rc
    write (num, '(i0)') k
    call say('hold '//trim(num))
    dir = env('CR_GATE_DIR')
    if (len(dir) > 0) then
      path = dir//'/gate-'//trim(num)
      do
        inquire (file=path, exist=there)
        if (.not. there) exit
        inquire (file=path//'.ping', exist=there)
        if (there) then
          open (newunit=u, file=path//'.ping', status='old', iostat=st)
          if (st == 0) close (u, status='delete', iostat=st)
        end if
        rc = usleep(5000_c_int)
      end do
    end if
    call say('go '//trim(num))
  end subroutine gate
end module crgate

program files_scratch
  use crgate
  use, intrinsic :: iso_fortran_env, only: int64
  implicit none
  integer, parameter :: nrec = 256, nw = 1024
  integer(int64), parameter :: modulus = 1000003_int64
  integer(int64) :: a(nw), other(nw), kept(nrec), total, h
  integer :: su, ou, steps, step, r, i, st
  character(len=32) :: arg
  character(len=200) :: msg

  steps = 12
  if (command_argument_count() >= 1) then
    call get_command_argument(1, arg)
    read (arg, *) steps
  end if

  open (newunit=su, status='scratch', form='unformatted', access='direct', &
        recl=8*nw, action='readwrite')
  open (newunit=ou, file='result.txt', status='replace', form='formatted', &
        action='write')
  do r = 1, nrec
    do i = 1, nw
      a(i) = mod(int(r, int64)*7919_int64 + int(i, int64)*104729_int64, modulus)
    end do
    write (su, rec=r) a
    kept(r) = checksum(a)
  end do
  flush (su)
  call started()

  do step = 1, steps
    total = 0
    do r = 1, nrec
      read (su, rec=r, iostat=st) a
      if (st /= 0) then
        write (msg, '(a,i0,a,i0,a,i0)') 'step ', step, ': cannot read record ', r, &
          ' of the scratch file: iostat ', st
        call fail(trim(msg))
      end if
      if (checksum(a) /= kept(r)) then
        write (msg, '(a,i0,a,i0,a)') 'step ', step, ': record ', r, &
          ' of the scratch file changed behind the program''s back'
        call fail(trim(msg))
      end if
      ! Read-modify-write: from the record's previous values and its neighbour's.
      if (r > 1) then
        read (su, rec=r - 1) other
      else
        read (su, rec=nrec) other
      end if
      do i = 1, nw
        a(i) = mod(a(i)*31_int64 + other(nw + 1 - i) + int(step*i, int64), modulus)
      end do
      write (su, rec=r) a
      kept(r) = checksum(a)
      total = mod(total*131_int64 + kept(r), 1125899906842597_int64)
    end do
    flush (su)
    h = kept(1 + mod(step*37, nrec))
    write (ou, '(a,i0,a,i0,a,i0)') 'step ', step, ' total ', total, ' sample ', h
    flush (ou)
    write (msg, '(a,i0,a,i0,a,i0)') 'step ', step, ' total ', total, ' sample ', h
    call say(trim(msg))
    if (mod(step, 4) == 0) call gate(step/4)
  end do
  close (su)
  close (ou)
  call say('PASS')

contains
  pure function checksum(v) result(c)
    integer(int64), intent(in) :: v(:)
    integer(int64) :: c
    integer :: j
    c = 0
    do j = 1, size(v)
      c = mod(c*1000033_int64 + v(j), 1099511627689_int64)
    end do
  end function checksum
end program files_scratch
