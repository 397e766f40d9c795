package storage;

/** Compile-time stand-in of COMPSs' dummy storage.StorageObject (every method unsupported, as in COMPSs). */
public class StorageObject implements StubItf {

    public StorageObject() {
    }

    public StorageObject(String alias) {
    }

    @Override
    public String getID() {
        throw new UnsupportedOperationException();
    }

    @Override
    public void makePersistent(String id) {
        throw new UnsupportedOperationException();
    }

    @Override
    public void deletePersistent() {
        throw new UnsupportedOperationException();
    }
}
