package storage;

/** Compile-time stand-in of COMPSs' storage.CallbackHandler (exact COMPSs 3.3 API). */
public abstract class CallbackHandler {

    public CallbackHandler() {
    }

    protected void eventListener(CallbackEvent e) {
    }
}
